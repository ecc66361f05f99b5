"""The point and median tables of the DfE 2003 value-added technical annex.

Source: Secondary School Performance Tables 2003, "Value added technical
information" (KS3 to GCSE/GNVQ).  Every number here is the annex's.
"""

from __future__ import annotations

from fractions import Fraction

#: GCSE grade -> points (full course); the short course scores half
GCSE_POINTS: dict[str, Fraction] = {
    "A*": Fraction(8),
    "A": Fraction(7),
    "B": Fraction(6),
    "C": Fraction(5),
    "D": Fraction(4),
    "E": Fraction(3),
    "F": Fraction(2),
    "G": Fraction(1),
    "U": Fraction(0),
    "X": Fraction(0),
}
GCSE_SHORT_POINTS: dict[str, Fraction] = {g: p / 2 for g, p in GCSE_POINTS.items()}

#: GNVQ qualification -> grade -> points
GNVQ_POINTS: dict[str, dict[str, Fraction]] = {
    "gnvq_full_intermediate": {
        "distinction": Fraction(30),
        "merit": Fraction(24),
        "pass": Fraction(20),
    },
    "gnvq_full_foundation": {
        "distinction": Fraction(16),
        "merit": Fraction(12),
        "pass": Fraction(6),
    },
    "gnvq_part_one_intermediate": {
        "distinction": Fraction(15),
        "merit": Fraction(12),
        "pass": Fraction(10),
    },
    "gnvq_part_one_foundation": {
        "distinction": Fraction(8),
        "merit": Fraction(6),
        "pass": Fraction(3),
    },
    "gnvq_language_unit_intermediate": {"pass": Fraction(7, 2)},
    "gnvq_language_unit_foundation": {"pass": Fraction(2)},
}

#: qualification -> number of records (a record is one GCSE short course)
RECORDS: dict[str, int] = {
    "gcse": 2,
    "gcse_short": 1,
    "gnvq_language_unit_intermediate": 1,
    "gnvq_language_unit_foundation": 1,
    "gnvq_part_one_intermediate": 4,
    "gnvq_part_one_foundation": 4,
    "gnvq_full_intermediate": 8,
    "gnvq_full_foundation": 8,
}

#: best 16 records = best 8 GCSE equivalents
CAP_RECORDS = 16

#: KS3 test outcome -> points by subject; None: not a valid outcome for that subject
KS3_POINTS: dict[str, dict[str, int | None]] = {
    "E": {"english": 57, "maths": 57, "science": 57},
    "8": {"english": 51, "maths": 51, "science": 51},
    "7": {"english": 45, "maths": 45, "science": 45},
    "6": {"english": 39, "maths": 39, "science": 39},
    "5": {"english": 33, "maths": 33, "science": 33},
    "4": {"english": 27, "maths": 27, "science": 27},
    "3": {"english": 21, "maths": 21, "science": 21},
    "2": {"english": None, "maths": 15, "science": 15},  # compensatory 2
    "N": {"english": 21, "maths": 15, "science": 15},  # not awarded a test level
    "B": {"english": 21, "maths": 15, "science": 15},  # working below the test
}
#: outcomes that are disregarded; "M" (mixed tier) exists for maths and science only
KS3_DISREGARDED: dict[str, tuple[str, ...]] = {
    "D": ("english", "maths", "science"),  # disapplied
    "A": ("english", "maths", "science"),  # absent
    "M": ("maths", "science"),  # mixed tier
    "L": ("english", "maths", "science"),  # lost script
}
KS3_SUBJECTS = ("english", "maths", "science")
KS3_ALIASES = {
    "DISAPPLIED": "D",
    "ABSENT": "A",
    "MIXED TIER": "M",
    "MIXED": "M",
    "LOST SCRIPT": "L",
    "LOST": "L",
    "COMPENSATORY 2": "2",
    "C2": "2",
}

#: national median lines: (highest KS3 average point score of the band, median capped
#: GCSE/GNVQ point score).  A score falls in the first band whose upper bound it does
#: not exceed; the annex's bands list the attainable scores (an average of KS3 points,
#: all 3 mod 6, over 1-3 subjects), so no attainable score lies between bands.
MEDIAN_TABLE_A: tuple[tuple[float, Fraction], ...] = (
    (18, Fraction(4)),
    (19, Fraction(7)),
    (21, Fraction(9)),
    (24, Fraction(14)),
    (25, Fraction(18)),
    (27, Fraction(23)),
    (30, Fraction(28)),
    (31, Fraction(32)),
    (33, Fraction(36)),
    (36, Fraction(40)),
    (37, Fraction(43)),
    (39, Fraction(46)),
    (42, Fraction(50)),
    (43, Fraction(53)),
    (45, Fraction(57)),
    (48, Fraction(119, 2)),
    (49, Fraction(61)),
    (float("inf"), Fraction(63)),
)
MEDIAN_TABLE_B: tuple[tuple[float, Fraction], ...] = (
    (18, Fraction(0)),
    (19, Fraction(0)),
    (21, Fraction(0)),
    (24, Fraction(2)),
    (25, Fraction(5)),
    (27, Fraction(5)),
    (30, Fraction(8)),
    (float("inf"), Fraction(13)),
)
BAND_LABELS_A = (
    "0-18",
    "19",
    "21",
    "23-24",
    "25",
    "27",
    "29-30",
    "31",
    "33",
    "35-36",
    "37",
    "39",
    "41-42",
    "43",
    "45",
    "47-48",
    "49",
    "51+",
)
BAND_LABELS_B = ("0-18", "19", "21", "23-24", "25", "27", "29-30", "31+")
