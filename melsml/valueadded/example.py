"""A synthetic pupil-records file for the DfE calculator, the CLI and the docs."""

from __future__ import annotations

import numpy as np
import pandas as pd

_GCSE = ["U", "G", "F", "E", "D", "C", "B", "A", "A*"]


def example_pupils_path():
    """Path of the shipped example file (``synthetic_pupil_records()``, seed 7)."""
    from importlib.resources import files

    return files("melsml").joinpath("data", "example_pupils.csv")


def synthetic_pupil_records(n_schools: int = 30, seed: int = 7) -> pd.DataFrame:
    """Long-format pupil records (one row per qualification result).

    Schools of 25-120 pupils; KS3 levels and GCSE grades driven by a latent
    ability and a school effect on progress; a few absent, disapplied, mixed
    tier and lost-script KS3 results; unmatched pupils; short courses and
    GNVQs; one special school (``special``) and the ``same_school`` flag.
    """
    rng = np.random.default_rng(seed)
    rows = []
    pupil_id = 0
    for s in range(1, n_schools + 1):
        school = f"S{s:03d}"
        special = s == n_schools
        size = int(rng.integers(25, 121))
        school_effect = rng.normal(0, 0.35)
        unmatched_rate = 0.6 if s == 1 else 0.04  # school S001: low coverage
        for _ in range(size):
            pupil_id += 1
            ability = rng.normal(-1.2 if special else 0.0, 1.0)
            ks3 = []
            for subj in ("english", "maths", "science"):
                level = int(np.clip(np.round(5.2 + 1.1 * ability + rng.normal(0, 0.6)), 2, 8))
                code = str(level) if level >= 3 else ("2" if subj != "english" else "N")
                u = rng.random()
                if u < 0.02:
                    code = "A"
                elif u < 0.025:
                    code = "L"
                elif u < 0.03 and subj != "english":
                    code = "M"
                ks3.append(code)
            if rng.random() < 0.01:
                ks3 = ["D", "D", "D"]
            if rng.random() < unmatched_rate:
                ks3 = [None, None, None]
            base = dict(
                pupil=pupil_id,
                school=school,
                ks3_english=ks3[0],
                ks3_maths=ks3[1],
                ks3_science=ks3[2],
                special=special,
                same_school=bool(rng.random() < 0.9),
            )
            progress = ability + school_effect + rng.normal(0, 0.5)
            n_gcse = (
                int(np.clip(rng.normal(8.5, 1.5), 0, 12))
                if not special
                else int(rng.integers(0, 5))
            )
            results = []
            for _ in range(n_gcse):
                g = int(np.clip(np.round(4.6 + 1.4 * progress + rng.normal(0, 0.8)), 0, 8))
                results.append(("gcse", _GCSE[g]))
            if rng.random() < 0.2:
                for _ in range(int(rng.integers(1, 3))):
                    g = int(np.clip(np.round(4.6 + 1.4 * progress + rng.normal(0, 1)), 0, 8))
                    results.append(("gcse_short", _GCSE[g]))
            if rng.random() < 0.08:
                level = "intermediate" if progress > -0.3 else "foundation"
                kind = "full" if rng.random() < 0.6 else "part_one"
                grade = ["pass", "merit", "distinction"][int(np.clip(progress + 1, 0, 2))]
                results.append((f"gnvq_{kind}_{level}", grade))
            if rng.random() < 0.02:
                results.append(("gnvq_language_unit_foundation", "pass"))
            if not results:
                rows.append(dict(base, qualification=None, grade=None))
            rows += [dict(base, qualification=q, grade=g) for q, g in results]
    return pd.DataFrame(rows)


def synthetic_progress8_pupils(n_schools: int = 40, seed: int = 11) -> pd.DataFrame:
    """One row per pupil for Progress 8 (and for a MELS model of Attainment 8).

    Columns: ``pupil``, ``school``, ``ks2_aps`` (key stage 2 average scaled
    score), ``ks2_group`` (its prior-attainment group: bands of 2 points, the
    extremes pooled; missing for the few pupils without key stage 2 results),
    the Attainment 8 elements ``a8_english`` and ``a8_maths`` (double
    weighted, 0-18), ``a8_ebacc`` and ``a8_open`` (0-27), and ``a8``, their
    sum.  Schools of 60-240 pupils differ in the mean of their pupils'
    progress and in its spread; about one pupil in 200 has no results at all
    (an extremely negative Progress 8 score).
    """
    rng = np.random.default_rng(seed)
    frames = []
    pupil0 = 0
    for s in range(1, n_schools + 1):
        size = int(rng.integers(60, 241))
        mean_effect = rng.normal(0.0, 0.35)
        sd_effect = float(np.exp(rng.normal(0.0, 0.25)))
        ks2 = np.clip(rng.normal(103.0 + 3.0 * mean_effect, 6.0, size), 80.0, 120.0)
        ks2 = np.round(ks2 * 2.0) / 2.0
        progress = mean_effect + sd_effect * rng.normal(0.0, 0.9, size)
        per_slot = np.clip(4.6 + 0.22 * (ks2 - 103.0) + progress, 0.0, 9.0)
        slots = {"english": 2, "maths": 2, "ebacc": 3, "open": 3}
        parts = {
            name: np.clip(np.round(k * (per_slot + rng.normal(0.0, 0.6, size)), 1), 0.0, 9.0 * k)
            for name, k in slots.items()
        }
        none = rng.random(size) < 0.005
        for name in parts:
            parts[name][none] = 0.0
        frame = pd.DataFrame(
            {
                "pupil": np.arange(pupil0 + 1, pupil0 + size + 1),
                "school": f"K{s:03d}",
                "ks2_aps": ks2,
                **{f"a8_{name}": v for name, v in parts.items()},
            }
        )
        frame.loc[rng.random(size) < 0.03, "ks2_aps"] = np.nan
        frames.append(frame)
        pupil0 += size
    data = pd.concat(frames, ignore_index=True)
    data["a8"] = data[[f"a8_{e}" for e in ("english", "maths", "ebacc", "open")]].sum(axis=1)
    data["a8"] = data["a8"].round(1)
    band = np.floor((data["ks2_aps"].clip(90.0, 116.0) - 90.0) / 2.0)
    data["ks2_group"] = pd.Series(band + 1.0).astype("Int64")
    return data
