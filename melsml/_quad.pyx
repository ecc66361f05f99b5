# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled likelihood kernel of melsml.

One loop over groups, one mode search, one node placement, one weighted pass
over the nodes; the integrand is the part that varies:

* exact location (``full=False``): the location effects u are Gaussian given
  the scale effects v and integrate out in closed form; adaptive
  Gauss-Hermite quadrature over the s standardised scale effects (none: the
  closed form).  Where the scale design h is the same on every row of a
  group, each node costs O(q^3) from per-group sums; where it varies within
  the group (a random scale slope on a unit covariate), O(n_j).
* full (``full=True``): adaptive Gauss-Hermite quadrature over all q + s
  standardised effects (the quadratic association; a check on the other).

The kernel works on contiguous float64 arrays and group offsets, releases
the GIL and writes into preallocated outputs.  Its readable specification and
test oracle is the NumPy twin ``tests/reference/engine_ref.py``; the
mathematics is in the user guide's model page.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport exp, log, log1p, sqrt, fabs, erfc, M_PI, INFINITY
from libc.stdlib cimport malloc, free

from melsml._dense cimport chol, chol_solve, place_node

import numpy as np

cdef double LOG2PI = log(2.0 * M_PI)
cdef double SQRT2 = sqrt(2.0)


cdef inline double log_ndtr(double t) noexcept nogil:
    """log Phi(t), accurate in both tails."""
    cdef double t2
    if t > 0.0:
        return log1p(-0.5 * erfc(t / SQRT2))
    if t > -37.0:
        return log(0.5 * erfc(-t / SQRT2))
    t2 = 1.0 / (t * t)
    return (-0.5 * t * t - 0.5 * LOG2PI - log(-t)
            + log(1.0 - t2 + 3.0 * t2 * t2 - 15.0 * t2 * t2 * t2))

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int melsml_max_threads(void) { return omp_get_max_threads(); }
    static int melsml_openmp(void) { return 1; }
    #else
    static int melsml_max_threads(void) { return 1; }
    static int melsml_openmp(void) { return 0; }
    #endif
    """
    int melsml_max_threads() noexcept nogil
    int melsml_openmp() noexcept nogil


def openmp_threads():
    """Threads the kernel uses by default (1 when built without OpenMP; OpenMP
    honours ``OMP_NUM_THREADS``)."""
    return melsml_max_threads()


def built_with_openmp():
    """Whether the kernel was compiled with OpenMP (else it runs on one thread)."""
    return bool(melsml_openmp())


cdef Py_ssize_t eng_work_size(int q, int s, Py_ssize_t n_nodes) noexcept nogil:
    """Doubles of work one thread needs (see eng_bind and the kernel's locals)."""
    cdef int d = q + s
    return (14 * q * q + 14 * q + 6 * s + 2 * q * s + 2 * s * q * q + 2 * s * s
            + 14 * d * d + 10 * d + n_nodes + 16)


cdef double* eng_bind(Eng* e, double* p) noexcept nogil:
    """Point the work arrays of ``e`` into ``p``; returns the first unused double."""
    cdef int q = e.q, s = e.s, d = e.d
    e.lam0 = p; p += q * q
    e.b0 = p; p += q
    e.h = p; p += s
    e.v = p; p += s
    e.gx = p; p += q
    e.lam = p; p += q * q
    e.b = p; p += q
    e.B = p; p += q * q
    e.W = p; p += q * q
    e.pinv = p; p += q * q
    e.m = p; p += q
    e.mu = p; p += q
    e.su = p; p += q
    e.sv = p; p += s
    e.N = p; p += q * s
    e.M = p; p += s * q * q
    e.PM = p; p += s * q * q
    e.T = p; p += s * s
    e.R = p; p += s * s
    e.om = p; p += d * d
    e.tmp = p; p += q * q
    e.tq = p; p += q
    e.zt = p; p += q
    e.x = p; p += d
    e.sx = p; p += d
    e.Hx = p; p += d * d
    return p

# ================================================================ small dense algebra
# ================================================================ the engine
# Any number of location effects u (q) and scale effects v (s), with a
# unit-level scale design h.  Readable specification and test oracle:
# tests/reference/engine_ref.py (same names, same steps).

cdef struct Eng:
    int q
    int s
    int d
    const double* Kvv     # s x s   v = Kvv xi
    const double* Kuv     # q x s   u = Kuv xi + C zeta
    const double* C       # q x q
    # the current group
    Py_ssize_t start
    Py_ssize_t stop
    int const_h
    double n
    double sumeta
    double A              # sum r0^2 / d          (constant-h groups)
    double* lam0          # q x q sum z z' / d
    double* b0            # q     sum z r0 / d
    double* h             # s     the group's h (constant-h groups)
    # node results
    double* v             # s
    double* gx            # q     Kuv xi
    double* lam           # q x q
    double* b             # q
    double c
    double bm
    double* B             # q x q  Cholesky of I + C' lam C
    double* W             # q x q  B^-1 C'
    double* pinv          # q x q  C B^-1 C'
    double* m             # q
    double* mu            # q     E[u | xi, y] = gx + m
    double* su            # q     E[d log p / d u]
    double* sv            # s     E[d log p / d v]
    double* N             # q x s
    double* M             # s x q x q
    double* PM            # s x q x q   pinv M_k
    double* T             # s x s
    double* R             # s x s
    double* om            # d x d   E[s s' + H]
    double* tmp           # q x q
    double* tq            # q
    double* zt            # q
    # the full-AGHQ integrand (all effects by quadrature): x = L theta + tau_q theta0^2 e_q
    int full
    const double* Lf      # d x d
    double tau_q
    double* x             # d
    double* sx            # d   d log p / d x
    double* Hx            # d x d
    double logp
    # per-unit work (n_obs each): a_i = exp(-eta_i - h_i'v), r_i, exp(-eta_i)
    double* aw
    double* rw
    double* invd          # w_i exp(-eta_i): unit weights enter every unit sum here
    const double* w       # unit weights (NULL: all 1)
    # gradient accumulation in the full pass (unit-level groups)
    int acc_grad
    double lw_off         # log weight of the node less log p(y | xi), less the reference
    double wt
    double* gmu
    double* gws
    double* gz
    # interval units (censored or ordinal outcomes): cs_i != 0 marks one; its
    # outcome is known to lie in (lo_i, hi_i] on the latent scale, with ivlo, ivhi
    # the limits less x'beta (-inf / +inf: open).  P = F(eps_hi) - F(eps_lo), F the
    # normal (link 0) or logistic (link 1) distribution function.  Interval units
    # are not in the Gaussian sums.  NULL when there are none.
    const double* cs
    const double* ivlo
    const double* ivhi
    int link
    double ncens
    double* aw2           # per interval unit: d log P / d eps_lo (aw: eps_hi)
    double* rw2           # eps_lo (rw: eps_hi)
    double* ghi           # output: gradient in the upper limit (ivhi) per unit
    double* seta          # exp(-eta_i / 2) of each interval unit
    int need_hess         # the interval units' Hessian terms are needed (mode search)


cdef void eng_init(Eng* e, int q, int s, const double* Kvv, const double* Kuv,
                   const double* C, const double* w, double* unit_work,
                   Py_ssize_t n_obs) noexcept nogil:
    """Dimensions, covariance factors, unit weights (NULL: all 1) and the per-unit
    work arrays (3 n_obs doubles) of an Eng, for the exact-location integrand."""
    e.q = q
    e.s = s
    e.d = q + s
    e.Kvv = Kvv
    e.Kuv = Kuv
    e.C = C
    e.w = w
    e.full = 0
    e.Lf = NULL
    e.tau_q = 0.0
    e.acc_grad = 0
    e.cs = NULL
    e.ivlo = NULL
    e.ivhi = NULL
    e.link = 0
    e.aw2 = NULL
    e.rw2 = NULL
    e.ghi = NULL
    e.seta = NULL
    e.need_hess = 1
    e.ncens = 0.0
    e.aw = unit_work
    e.rw = unit_work + n_obs
    e.invd = unit_work + 2 * n_obs


cdef inline void group_pass(Eng* e, Py_ssize_t start, Py_ssize_t stop, int const_h,
                            const double* r0, const double* eta, const double* Z,
                            bint intervals, bint one) noexcept nogil:
    """eng_group's pass over the units.  ``intervals``: some units are interval
    units; ``one``: one location effect and h constant (scalar sums).  Both
    are constants at eng_group's fast call, which the compiler specialises.
    The sums are kept in locals (the struct's fields may alias the arrays)."""
    cdef int q = e.q
    cdef int a, b
    cdef Py_ssize_t i
    cdef double ai, wi, ei, ri, zi
    cdef double n = 0.0, sumeta = 0.0, A = 0.0, ncens = 0.0, b00 = 0.0, l00 = 0.0
    cdef double* invd = e.invd
    cdef const double* wp = e.w
    cdef const double* cs = e.cs
    for i in range(start, stop):
        wi = wp[i] if wp != NULL else 1.0
        ei = eta[i]
        ai = wi * exp(-ei)
        invd[i] = ai
        if intervals and cs[i] != 0.0:
            ncens += 1.0
            e.seta[i] = exp(-0.5 * ei)
            continue
        n += wi
        sumeta += wi * ei
        if one:
            ri = r0[i]
            zi = Z[i]
            A += ai * ri * ri
            b00 += ai * zi * ri
            l00 += ai * zi * zi
        elif const_h:
            ri = r0[i]
            A += ai * ri * ri
            for a in range(q):
                e.b0[a] += ai * Z[i * q + a] * ri
                for b in range(a + 1):
                    e.lam0[a * q + b] += ai * Z[i * q + a] * Z[i * q + b]
    e.n = n
    e.sumeta = sumeta
    e.A = A
    e.ncens = ncens
    if one:
        e.b0[0] = b00
        e.lam0[0] = l00


cdef void eng_group(Eng* e, Py_ssize_t start, Py_ssize_t stop, int const_h,
                    const double* r0, const double* eta, const double* Z,
                    const double* H) noexcept nogil:
    """Make group [start, stop) current: one pass over its units for the
    per-group sums (and exp(-eta_i), kept for the node loops)."""
    cdef int q = e.q, s = e.s
    cdef int a, b
    e.start = start
    e.stop = stop
    e.const_h = const_h
    e.acc_grad = 0
    for a in range(q * q):
        e.lam0[a] = 0.0
    for a in range(q):
        e.b0[a] = 0.0
    for a in range(s):
        e.h[a] = H[start * s + a]
    if e.cs == NULL and const_h and q == 1:
        group_pass(e, start, stop, const_h, r0, eta, Z, False, True)  # the common case
    else:
        group_pass(e, start, stop, const_h, r0, eta, Z, e.cs != NULL, const_h and q == 1)
    for a in range(q):
        for b in range(a + 1, q):
            e.lam0[a * q + b] = e.lam0[b * q + a]


cdef double eng_units(Eng* e, const double* shift, const double* r0, const double* Z,
                      const double* H, bint sums) noexcept nogil:
    """One pass over the group's units at the current v: the precision weights
    a_i = exp(-eta_i - h_i'v) and residuals r_i = r0_i - z_i'shift (kept in
    e.aw, e.rw), c = sum a r^2 and, with ``sums``, b = sum a z r and
    lam = sum a z z'.  Returns sum h_i'v.  (Unit-level scale designs only.)"""
    cdef int q = e.q, s = e.s
    cdef int a, b
    cdef Py_ssize_t i
    cdef double hv, ai, ri, sumhv = 0.0, z0
    e.c = 0.0
    if sums:
        for a in range(q):
            e.b[a] = 0.0
            for b in range(q):
                e.lam[a * q + b] = 0.0
    for i in range(e.start, e.stop):
        if e.cs != NULL and e.cs[i] != 0.0:
            continue
        hv = 0.0
        for a in range(s):
            hv += H[i * s + a] * e.v[a]
        sumhv += (e.w[i] if e.w != NULL else 1.0) * hv
        ai = e.invd[i] * exp(-hv)
        if q == 1:
            # the random-intercept case: scalar arithmetic
            z0 = Z[i]
            ri = r0[i] - z0 * shift[0]
            if sums:
                e.b[0] += ai * z0 * ri
                e.lam[0] += ai * z0 * z0
        else:
            ri = r0[i]
            for a in range(q):
                ri -= Z[i * q + a] * shift[a]
            if sums:
                for a in range(q):
                    e.b[a] += ai * Z[i * q + a] * ri
                    for b in range(a + 1):
                        e.lam[a * q + b] += ai * Z[i * q + a] * Z[i * q + b]
        e.aw[i] = ai
        e.rw[i] = ri
        e.c += ai * ri * ri
    if sums:
        for a in range(q):
            for b in range(a + 1, q):
                e.lam[a * q + b] = e.lam[b * q + a]
    return sumhv


cdef void eng_node(Eng* e, const double* xi, const double* r0, const double* eta,
                   const double* Z, const double* H, bint full) noexcept nogil:
    """log p(y | xi) of the current group and, with ``full``, the posterior terms."""
    cdef int q = e.q, s = e.s, d = e.d
    cdef int a, b, k, l
    cdef Py_ssize_t i
    cdef double acc, hv, sumhv, ai, ri, kap, eh, qd, rho, trPL, trPLPL, mLm, wi, hk, z0
    if q == 1 and s == 1 and e.const_h:
        eng_node_11(e, xi[0], full)
        return
    for a in range(s):
        acc = 0.0
        for b in range(s):
            acc += e.Kvv[a * s + b] * xi[b]
        e.v[a] = acc
    for a in range(q):
        acc = 0.0
        for b in range(s):
            acc += e.Kuv[a * s + b] * xi[b]
        e.gx[a] = acc
    # the weighted sums lam, b, c at this node
    if e.const_h:
        hv = 0.0
        for a in range(s):
            hv += e.h[a] * e.v[a]
        kap = exp(-hv)
        sumhv = e.n * hv
        e.c = e.A
        for a in range(q):
            acc = 0.0
            for b in range(q):
                acc += e.lam0[a * q + b] * e.gx[b]
                e.lam[a * q + b] = kap * e.lam0[a * q + b]
            e.tq[a] = acc                                  # lam0 gx
        for a in range(q):
            e.b[a] = kap * (e.b0[a] - e.tq[a])
            e.c += -2.0 * e.gx[a] * e.b0[a] + e.gx[a] * e.tq[a]
        e.c *= kap
    else:
        sumhv = eng_units(e, e.gx, r0, Z, H, True)
    # B = I + C' lam C, W = B^-1 C', pinv = C W, m = pinv b
    for a in range(q):
        for b in range(q):
            acc = 0.0
            for k in range(q):
                acc += e.lam[a * q + k] * e.C[k * q + b]
            e.tmp[a * q + b] = acc                          # lam C
    for a in range(q):
        for b in range(q):
            acc = 1.0 if a == b else 0.0
            for k in range(q):
                acc += e.C[k * q + a] * e.tmp[k * q + b]
            e.B[a * q + b] = acc
    chol(e.B, q)
    acc = 0.0
    for a in range(q):
        acc += 2.0 * log(e.B[a * q + a])
    e.logp = acc
    for b in range(q):
        for a in range(q):
            e.tq[a] = e.C[b * q + a]
        chol_solve(e.B, q, e.tq)
        for a in range(q):
            e.W[a * q + b] = e.tq[a]
    for a in range(q):
        for b in range(q):
            acc = 0.0
            for k in range(q):
                acc += e.C[a * q + k] * e.W[k * q + b]
            e.pinv[a * q + b] = acc
    e.bm = 0.0
    for a in range(q):
        acc = 0.0
        for b in range(q):
            acc += e.pinv[a * q + b] * e.b[b]
        e.m[a] = acc
        e.mu[a] = e.gx[a] + acc
        e.bm += e.b[a] * acc
    e.logp = -0.5 * (e.n * LOG2PI + e.sumeta + sumhv + e.logp + e.c - e.bm)
    if not full:
        return
    if e.acc_grad:
        e.wt = exp(e.logp + e.lw_off)
    for a in range(q):
        acc = 0.0
        for b in range(q):
            acc += e.lam[a * q + b] * e.m[b]
        e.su[a] = e.b[a] - acc
    if e.const_h:
        mLm = 0.0
        trPL = 0.0
        for a in range(q):
            mLm += e.m[a] * (e.b[a] - e.su[a])
            for b in range(q):
                acc = 0.0
                for k in range(q):
                    acc += e.pinv[a * q + k] * e.lam[k * q + b]
                e.tmp[a * q + b] = acc                      # pinv lam
            trPL += e.tmp[a * q + a]
        trPLPL = 0.0
        for a in range(q):
            for b in range(q):
                trPLPL += e.tmp[a * q + b] * e.tmp[b * q + a]
        rho = e.c - 2.0 * e.bm + mLm + trPL
        for k in range(s):
            e.sv[k] = -0.5 * e.h[k] * (e.n - rho)
            for a in range(q):
                e.N[a * s + k] = e.su[a] * e.h[k]
            for l in range(s):
                e.T[k * s + l] = e.h[k] * e.h[l] * trPLPL
                e.R[k * s + l] = rho * e.h[k] * e.h[l]
    else:
        for k in range(s):
            e.sv[k] = 0.0
            for l in range(s):
                e.R[k * s + l] = 0.0
            for a in range(q):
                e.N[a * s + k] = 0.0
                for b in range(q):
                    e.M[(k * q + a) * q + b] = 0.0
        for i in range(e.start, e.stop):
            ai = e.aw[i]
            eh = e.rw[i]
            wi = e.w[i] if e.w != NULL else 1.0
            if q == 1:
                # the random-intercept case: scalar arithmetic in registers
                z0 = Z[i]
                eh -= z0 * e.m[0]
                acc = e.pinv[0] * z0
                qd = z0 * acc
                rho = ai * (eh * eh + qd)
                if e.acc_grad:
                    e.gz[i] += e.wt * ai * (eh * e.mu[0] - acc)
                ri = ai * eh * z0
                hv = ai * z0 * z0
            else:
                for a in range(q):
                    eh -= Z[i * q + a] * e.m[a]
                qd = 0.0
                for a in range(q):
                    acc = 0.0
                    for b in range(q):
                        acc += e.pinv[a * q + b] * Z[i * q + b]
                    e.zt[a] = acc
                    qd += Z[i * q + a] * acc
                rho = ai * (eh * eh + qd)
                if e.acc_grad:
                    for a in range(q):
                        e.gz[i * q + a] += e.wt * ai * (eh * e.mu[a] - e.zt[a])
            if e.acc_grad:
                e.gmu[i] += e.wt * ai * eh
                e.gws[i] += e.wt * rho
            for k in range(s):
                hk = H[i * s + k]
                e.sv[k] -= 0.5 * hk * (wi - rho)
                for l in range(k + 1):
                    e.R[k * s + l] += rho * hk * H[i * s + l]
                if q == 1:
                    e.N[k] += ri * hk
                    e.M[k] += hv * hk
                else:
                    for a in range(q):
                        e.N[a * s + k] += ai * eh * Z[i * q + a] * hk
                        for b in range(q):
                            e.M[(k * q + a) * q + b] += ai * hk * Z[i * q + a] * Z[i * q + b]
        for k in range(s):
            for l in range(k + 1, s):
                e.R[k * s + l] = e.R[l * s + k]
        for k in range(s):
            for a in range(q):
                for b in range(q):
                    acc = 0.0
                    for l in range(q):
                        acc += e.pinv[a * q + l] * e.M[(k * q + l) * q + b]
                    e.PM[(k * q + a) * q + b] = acc
        for k in range(s):
            for l in range(s):
                acc = 0.0
                for a in range(q):
                    for b in range(q):
                        acc += e.PM[(k * q + a) * q + b] * e.PM[(l * q + b) * q + a]
                e.T[k * s + l] = acc
    # om = E[s s' + H] in x = (u, v)
    for a in range(q):
        for b in range(q):
            acc = 0.0
            for k in range(q):
                acc += e.pinv[a * q + k] * e.lam[k * q + b]
            e.tmp[a * q + b] = acc                          # pinv lam
    for a in range(q):
        for b in range(q):
            acc = 0.0
            for k in range(q):
                acc += e.lam[a * q + k] * e.tmp[k * q + b]
            e.om[a * d + b] = e.su[a] * e.su[b] + acc - e.lam[a * q + b]
        for k in range(s):
            acc = 0.0
            for b in range(q):
                acc += e.tmp[b * q + a] * e.N[b * s + k]      # (lam pinv N)_ak
            e.om[a * d + q + k] = e.su[a] * e.sv[k] + acc - e.N[a * s + k]
            e.om[(q + k) * d + a] = e.om[a * d + q + k]
    for k in range(s):
        for l in range(s):
            acc = 0.0
            for a in range(q):
                for b in range(q):
                    acc += e.N[a * s + k] * e.pinv[a * q + b] * e.N[b * s + l]
            e.om[(q + k) * d + q + l] = (e.sv[k] * e.sv[l] + 0.5 * e.T[k * s + l] + acc
                                         - 0.5 * e.R[k * s + l])


cdef inline void eng_node_11(Eng* e, double xi, bint full) noexcept nogil:
    """eng_node for one location and one scale effect with h constant in the group
    (today's random-intercept models): the same quantities with scalars."""
    cdef double v = e.Kvv[0] * xi
    cdef double gx = e.Kuv[0] * xi
    cdef double hv = e.h[0] * v
    cdef double kap = exp(-hv)
    cdef double lam0 = e.lam0[0]
    cdef double lam = kap * lam0
    cdef double b = kap * (e.b0[0] - lam0 * gx)
    cdef double c = kap * (e.A - 2.0 * gx * e.b0[0] + gx * gx * lam0)
    cdef double cc = e.C[0]
    cdef double B = 1.0 + cc * cc * lam
    cdef double pinv = cc * cc / B
    cdef double m = pinv * b
    cdef double bm = b * m
    cdef double su, rho, sv, N, pl
    e.v[0] = v
    e.gx[0] = gx
    e.lam[0] = lam
    e.b[0] = b
    e.c = c
    e.B[0] = sqrt(B)
    e.pinv[0] = pinv
    e.m[0] = m
    e.mu[0] = gx + m
    e.bm = bm
    e.logp = -0.5 * (e.n * LOG2PI + e.sumeta + e.n * hv + log(B) + c - bm)
    if not full:
        return
    if e.acc_grad:
        e.wt = exp(e.logp + e.lw_off)
    su = b - lam * m
    pl = pinv * lam
    rho = c - 2.0 * bm + m * lam * m + pl
    sv = -0.5 * e.h[0] * (e.n - rho)
    N = su * e.h[0]
    e.su[0] = su
    e.sv[0] = sv
    e.om[0] = su * su + lam * pl - lam
    e.om[1] = su * sv + (pl - 1.0) * N
    e.om[2] = e.om[1]
    e.om[3] = sv * sv + 0.5 * e.h[0] * e.h[0] * pl * pl + N * N * pinv - 0.5 * rho * e.h[0] * e.h[0]


cdef inline double link_cdf(int link, double t) noexcept nogil:
    if link == 0:
        return 0.5 * erfc(-t / SQRT2)
    if t >= 0.0:
        return 1.0 / (1.0 + exp(-t))
    return exp(t) / (1.0 + exp(t))


cdef inline double link_logpdf(int link, double t) noexcept nogil:
    if link == 0:
        return -0.5 * t * t - 0.5 * LOG2PI
    return -fabs(t) - 2.0 * log1p(exp(-fabs(t)))


cdef inline double link_logcdf(int link, double t) noexcept nogil:
    if link == 0:
        return log_ndtr(t)
    return -log1p(exp(-t)) if t >= 0.0 else t - log1p(exp(t))


cdef double eng_cens_logp(Eng* e, const double* r0, const double* eta, const double* Z,
                          const double* H) noexcept nogil:
    """The interval units' log P terms at the node (u = e.mu, v = e.v); keeps
    sqrt(a_i) in e.invd, d log P / d eps_hi and eps_hi in e.aw, e.rw and the same
    for eps_lo in e.aw2, e.rw2 (0 for an open side), for eng_cens_grad and the
    unit gradients."""
    cdef int q = e.q, s = e.s, link = e.link
    cdef int a
    cdef Py_ssize_t i
    cdef double hv, sa, zu, lo, hi, lp, fl, fh, pr, shv = 1.0, out = 0.0, prod = 1.0
    cdef double wi
    cdef bint open_lo, open_hi
    if e.const_h:
        hv = 0.0
        for a in range(s):
            hv += e.h[a] * e.v[a]
        shv = exp(-0.5 * hv)
    for i in range(e.start, e.stop):
        if e.cs[i] == 0.0:
            continue
        if e.const_h:
            sa = e.seta[i] * shv
        else:
            hv = 0.0
            for a in range(s):
                hv += H[i * s + a] * e.v[a]
            sa = e.seta[i] * exp(-0.5 * hv)
        zu = 0.0
        for a in range(q):
            zu += Z[i * q + a] * e.mu[a]
        open_lo = e.ivlo[i] == -INFINITY
        open_hi = e.ivhi[i] == INFINITY
        lo = 0.0 if open_lo else (e.ivlo[i] - zu) * sa
        hi = 0.0 if open_hi else (e.ivhi[i] - zu) * sa
        if open_lo:
            lp = link_logcdf(link, hi)
        elif open_hi:
            lp = link_logcdf(link, -lo)
        else:
            # F(hi) - F(lo), from the upper tail when both are above the centre
            if lo > 0.0:
                pr = link_cdf(link, -lo) - link_cdf(link, -hi)
            else:
                pr = link_cdf(link, hi) - link_cdf(link, lo)
            if pr < 1e-300:
                pr = 1e-300
        wi = e.w[i] if e.w != NULL else 1.0
        if open_lo or open_hi:
            fh = 0.0 if open_hi else exp(link_logpdf(link, hi) - lp)
            fl = 0.0 if open_lo else -exp(link_logpdf(link, lo) - lp)
            out += wi * lp
        else:
            # unit-weight units: one log per run of them, of the product of
            # their probabilities, taken before the product underflows
            fh = exp(link_logpdf(link, hi)) / pr
            fl = -exp(link_logpdf(link, lo)) / pr
            if wi == 1.0:
                prod *= pr
                if prod < 1e-250:
                    out += log(prod)
                    prod = 1.0
            else:
                out += wi * log(pr)
        e.invd[i] = sa
        e.aw[i] = fh
        e.rw[i] = hi
        e.aw2[i] = fl
        e.rw2[i] = lo
    return out + log(prod)


cdef void eng_cens_grad(Eng* e, const double* Z, const double* H) noexcept nogil:
    """Add the interval units' terms to the gradient e.sx and Hessian e.Hx in x."""
    cdef int q = e.q, s = e.s, d = e.d
    cdef int a, b
    cdef Py_ssize_t i
    cdef double sa, wi, lh, ll_, eh, el, chh, cll, hh, lll, hl, s0, s1, s2, t0, t1, ha, hb
    for i in range(e.start, e.stop):
        if e.cs[i] == 0.0:
            continue
        wi = e.w[i] if e.w != NULL else 1.0
        sa = e.invd[i]
        lh = e.aw[i]
        eh = e.rw[i]
        ll_ = e.aw2[i]
        el = e.rw2[i]
        t0 = lh + ll_
        t1 = lh * eh + ll_ * el
        if not e.need_hess:
            for a in range(q):
                e.sx[a] -= wi * t0 * Z[i * q + a] * sa
            for b in range(s):
                e.sx[q + b] -= wi * 0.5 * (e.h[b] if e.const_h else H[i * s + b]) * t1
            continue
        # second derivatives of log P in (eps_hi, eps_lo)
        if e.link == 0:
            chh = -eh
            cll = -el
        else:
            chh = 1.0 - 2.0 * link_cdf(1, eh)
            cll = 1.0 - 2.0 * link_cdf(1, el)
        hh = lh * chh - lh * lh
        lll = ll_ * cll - ll_ * ll_
        hl = -lh * ll_
        s0 = hh + lll + 2.0 * hl
        s1 = hh * eh + hl * el + hl * eh + lll * el
        s2 = hh * eh * eh + 2.0 * hl * eh * el + lll * el * el
        for a in range(q):
            e.sx[a] -= wi * t0 * Z[i * q + a] * sa
            for b in range(q):
                e.Hx[a * d + b] += wi * s0 * sa * sa * Z[i * q + a] * Z[i * q + b]
        for b in range(s):
            hb = e.h[b] if e.const_h else H[i * s + b]
            e.sx[q + b] -= wi * 0.5 * hb * t1
            for a in range(q):
                e.Hx[a * d + q + b] += wi * 0.5 * Z[i * q + a] * hb * sa * (s1 + t0)
                e.Hx[(q + b) * d + a] += wi * 0.5 * Z[i * q + a] * hb * sa * (s1 + t0)
            for a in range(s):
                ha = e.h[a] if e.const_h else H[i * s + a]
                e.Hx[(q + a) * d + q + b] += wi * 0.25 * ha * hb * (s2 + t1)


cdef void eng_full_node(Eng* e, const double* th, const double* r0, const double* eta,
                        const double* Z, const double* H, bint full) noexcept nogil:
    """log p(y | x) at x = L theta (+ tau_q theta0^2 on the first scale effect) and,
    with ``full``, its gradient s and Hessian in x; e.om = s theta' (the node's
    term of d log p / d L)."""
    cdef int q = e.q, s = e.s, d = e.d
    cdef int a, b, k
    cdef Py_ssize_t i
    cdef double acc, hv, kap, cu, sumhv, ai, ei, ss
    for a in range(d):
        acc = 0.0
        for b in range(a + 1):
            acc += e.Lf[a * d + b] * th[b]
        e.x[a] = acc
    if s > 0:
        e.x[q] += e.tau_q * th[0] * th[0]
    for a in range(q):
        e.mu[a] = e.x[a]
        for b in range(q):
            e.pinv[a * q + b] = 0.0
    for a in range(s):
        e.v[a] = e.x[q + a]
    if e.const_h:
        hv = 0.0
        for a in range(s):
            hv += e.h[a] * e.v[a]
        kap = exp(-hv)
        cu = e.A
        for a in range(q):
            acc = 0.0
            for b in range(q):
                acc += e.lam0[a * q + b] * e.mu[b]
            e.tq[a] = acc                                   # lam0 u
            cu += -2.0 * e.mu[a] * e.b0[a] + e.mu[a] * acc
        e.logp = -0.5 * (e.n * LOG2PI + e.sumeta + e.n * hv + kap * cu)
        if e.ncens > 0.0:
            e.logp += eng_cens_logp(e, r0, eta, Z, H)
        if not full:
            return
        for a in range(q):
            e.sx[a] = kap * (e.b0[a] - e.tq[a])
        for a in range(s):
            e.sx[q + a] = -0.5 * e.h[a] * (e.n - kap * cu)
        for a in range(q):
            for b in range(q):
                e.Hx[a * d + b] = -kap * e.lam0[a * q + b]
            for k in range(s):
                e.Hx[a * d + q + k] = -e.sx[a] * e.h[k]
                e.Hx[(q + k) * d + a] = e.Hx[a * d + q + k]
        for a in range(s):
            for b in range(s):
                e.Hx[(q + a) * d + q + b] = -0.5 * kap * cu * e.h[a] * e.h[b]
    else:
        sumhv = eng_units(e, e.mu, r0, Z, H, False)
        e.logp = -0.5 * (e.n * LOG2PI + e.sumeta + sumhv + e.c)
        if e.ncens > 0.0:
            e.logp += eng_cens_logp(e, r0, eta, Z, H)
        if not full:
            return
        if e.acc_grad:
            e.wt = exp(e.logp + e.lw_off)
        for a in range(d):
            e.sx[a] = 0.0
            for b in range(d):
                e.Hx[a * d + b] = 0.0
        for i in range(e.start, e.stop):
            if e.cs != NULL and e.cs[i] != 0.0:
                continue
            ai = e.aw[i]
            ei = e.rw[i]
            for a in range(q):
                e.sx[a] += ai * ei * Z[i * q + a]
                for b in range(a + 1):
                    e.Hx[a * d + b] -= ai * Z[i * q + a] * Z[i * q + b]
                for k in range(s):
                    e.Hx[(q + k) * d + a] -= ai * ei * Z[i * q + a] * H[i * s + k]
            for a in range(s):
                e.sx[q + a] -= 0.5 * H[i * s + a] * (
                    (e.w[i] if e.w != NULL else 1.0) - ai * ei * ei)
                for b in range(a + 1):
                    e.Hx[(q + a) * d + q + b] -= 0.5 * ai * ei * ei * H[i * s + a] * H[i * s + b]
            if e.acc_grad:
                e.gmu[i] += e.wt * ai * ei
                e.gws[i] += e.wt * ai * ei * ei
                for a in range(q):
                    e.gz[i * q + a] += e.wt * ai * ei * e.mu[a]
        for a in range(d):
            for b in range(a + 1, d):
                e.Hx[a * d + b] = e.Hx[b * d + a]
    if e.ncens > 0.0:
        eng_cens_grad(e, Z, H)
    if e.acc_grad and e.const_h:
        e.wt = exp(e.logp + e.lw_off)
    for a in range(d):
        for b in range(d):
            e.om[a * d + b] = e.sx[a] * th[b]


cdef double eng_psi(Eng* e, const double* xi, const double* r0, const double* eta,
                    const double* Z, const double* H, double* grad, double* hess,
                    double* sbar) noexcept nogil:
    """Log integrand over xi (theta for the full integrand); with ``grad`` != NULL
    also its gradient and Hessian."""
    cdef int q = e.q, s = e.s, d = e.d
    cdef int a, b, k, l
    cdef double acc, val
    if e.full:
        return eng_full_psi(e, xi, r0, eta, Z, H, grad, hess)
    eng_node(e, xi, r0, eta, Z, H, grad != NULL)
    val = e.logp - 0.5 * s * LOG2PI
    for a in range(s):
        val -= 0.5 * xi[a] * xi[a]
    if grad == NULL:
        return val
    # J = [Kuv; Kvv] (d x s); grad = J' sbar - xi; hess = J' (om - sbar sbar') J - I
    for a in range(q):
        sbar[a] = e.su[a]
    for a in range(s):
        sbar[q + a] = e.sv[a]
    for k in range(s):
        acc = -xi[k]
        for a in range(q):
            acc += e.Kuv[a * s + k] * sbar[a]
        for a in range(s):
            acc += e.Kvv[a * s + k] * sbar[q + a]
        grad[k] = acc
    for a in range(d):
        for b in range(d):
            e.om[a * d + b] -= sbar[a] * sbar[b]
    for k in range(s):
        for l in range(s):
            acc = -1.0 if k == l else 0.0
            for a in range(d):
                for b in range(d):
                    acc += ((e.Kuv[a * s + k] if a < q else e.Kvv[(a - q) * s + k])
                            * e.om[a * d + b]
                            * (e.Kuv[b * s + l] if b < q else e.Kvv[(b - q) * s + l]))
            hess[k * s + l] = acc
    return val


cdef double eng_full_psi(Eng* e, const double* th, const double* r0, const double* eta,
                         const double* Z, const double* H, double* grad,
                         double* hess) noexcept nogil:
    """Log integrand over theta (all effects); J = dx/dtheta = L + 2 tau_q theta0 e_q e_0'."""
    cdef int q = e.q, d = e.d
    cdef int a, b, k, l
    cdef double acc, val, jq
    e.need_hess = 1
    eng_full_node(e, th, r0, eta, Z, H, grad != NULL)
    val = e.logp - 0.5 * d * LOG2PI
    for a in range(d):
        val -= 0.5 * th[a] * th[a]
    if grad == NULL:
        return val
    jq = 2.0 * e.tau_q * th[0] if e.s > 0 else 0.0
    for k in range(d):
        acc = -th[k]
        for a in range(k, d):
            acc += e.Lf[a * d + k] * e.sx[a]
        if k == 0:
            acc += jq * e.sx[q]
        grad[k] = acc
    # T1 = Hx J (stored in e.om's place is not allowed: om holds s theta'); use hess
    for k in range(d):
        for l in range(d):
            acc = -1.0 if k == l else 0.0
            for a in range(d):
                for b in range(d):
                    acc += ((e.Lf[a * d + k] + (jq if (a == q and k == 0) else 0.0))
                            * e.Hx[a * d + b]
                            * (e.Lf[b * d + l] + (jq if (b == q and l == 0) else 0.0)))
            hess[k * d + l] = acc
    if e.s > 0:
        hess[0] += 2.0 * e.tau_q * e.sx[q]
    return val


cdef struct Shared:
    # inputs
    const Py_ssize_t* gptr
    const unsigned char* hc
    const double* r0
    const double* eta
    const double* Z
    const double* H
    const double* gh_x
    const double* gh_logw
    int n_q
    Py_ssize_t n_nodes
    int m
    int adapt
    int compute_grad
    int full
    # outputs (rows per group or per unit: threads write disjoint rows)
    double* ll
    double* ex
    double* exx
    double* dL
    double* dtq
    double* cen
    int cw
    double* gmu
    double* gws
    double* gz


cdef struct Work:
    double* xi
    double* xi2
    double* grad
    double* grad2
    double* step
    double* hess
    double* hess2
    double* Lc
    double* T1
    double* sbar
    double* k1
    double* ztmp
    double* k2
    double* omacc
    double* lwbuf
    int* idx


cdef Work eng_work(double* p, int q, int d) noexcept nogil:
    """The kernel's local arrays of one thread, from ``p`` (after eng_bind)."""
    cdef Work w
    w.xi = p
    w.xi2 = p + d
    w.grad = p + 2 * d
    w.grad2 = p + 3 * d
    w.step = p + 4 * d
    w.sbar = p + 5 * d
    w.hess = p + 6 * d
    w.hess2 = p + 6 * d + d * d
    w.Lc = p + 6 * d + 2 * d * d
    w.T1 = p + 6 * d + 3 * d * d
    w.omacc = p + 6 * d + 4 * d * d
    w.k1 = p + 6 * d + 5 * d * d
    w.ztmp = p + 6 * d + 5 * d * d + q
    w.k2 = p + 6 * d + 5 * d * d + 2 * q
    w.lwbuf = p + 6 * d + 5 * d * d + 2 * q + q * q
    w.idx = <int*> malloc((d + 1) * sizeof(int))
    return w


cdef inline void unit_grads(Eng* e, Work* w, Shared* sh, double kap, bint intervals,
                            bint one) noexcept nogil:
    """The unit gradients of a group with h constant, from the posterior
    moments kap = E[exp(-h'v)], k1 = E[exp(-h'v) u], k2 = E[exp(-h'v) (u u' +
    var)].  ``intervals``: skip interval units; ``one``: one location effect
    (scalars); both constants at the common call, which the compiler
    specialises.  Locals, not the structs' fields, in the loop (aliasing)."""
    cdef int q = e.q
    cdef int a, b
    cdef Py_ssize_t i
    cdef double ai, ri, zi, eh, qd, acc
    cdef double k10 = w.k1[0] if q > 0 else 0.0
    cdef double k20 = w.k2[0] if q > 0 else 0.0
    cdef const double* r0p = sh.r0
    cdef const double* zp = sh.Z
    cdef const double* invd = e.invd
    cdef const double* csp = e.cs
    cdef const double* wp = e.w
    cdef double* gmu = sh.gmu
    cdef double* gws = sh.gws
    cdef double* gz = sh.gz
    for i in range(e.start, e.stop):
        if intervals and csp[i] != 0.0:
            continue
        ai = invd[i]
        ri = r0p[i]
        eh = kap * ri
        qd = kap * ri * ri
        if one:
            zi = zp[i]
            eh -= zi * k10
            qd -= 2.0 * ri * zi * k10
            acc = k20 * zi
            qd += zi * acc
            gz[i] = ai * (ri * k10 - acc)
        else:
            for a in range(q):
                eh -= zp[i * q + a] * w.k1[a]
                qd -= 2.0 * ri * zp[i * q + a] * w.k1[a]
                acc = 0.0
                for b in range(q):
                    acc += w.k2[a * q + b] * zp[i * q + b]
                qd += zp[i * q + a] * acc
                gz[i * q + a] = ai * (ri * w.k1[a] - acc)
        gmu[i] = ai * eh
        gws[i] = 0.5 * (ai * qd - (wp[i] if wp != NULL else 1.0))


cdef void eng_one_group(Eng* e, Work* w, Shared* sh, Py_ssize_t j) noexcept nogil:
    """Group j: node placement, the weighted pass over the nodes, the gradients."""
    cdef int q = e.q, s = e.s, d = e.d, m = sh.m
    cdef Py_ssize_t i, node
    cdef int a, b, k, it, ls, ok
    cdef double acc, mx, tot, wt, val = 0.0, valn = 0.0, nrm, t, lwd, ai, eh, qd, kap, gtq
    eng_group(e, sh.gptr[j], sh.gptr[j + 1], sh.hc[j] if s > 0 else 1,
              sh.r0, sh.eta, sh.Z, sh.H)

    # ---- node placement: mode of the log integrand (over w.xi, or theta if sh.full)
    if m > 0 and sh.adapt:
        for a in range(m):
            w.xi[a] = sh.cen[j * sh.cw + a]
        val = eng_psi(e, w.xi, sh.r0, sh.eta, sh.Z, sh.H, w.grad, w.hess, w.sbar)
        for it in range(200):
            for a in range(m * m):
                w.hess2[a] = -w.hess[a]
            ok = chol(w.hess2, m)
            for a in range(m):
                w.step[a] = w.grad[a]
            if ok:
                chol_solve(w.hess2, m, w.step)
            else:
                nrm = 0.0
                for a in range(m):
                    nrm += w.grad[a] * w.grad[a]
                nrm = sqrt(nrm)
                for a in range(m):
                    w.step[a] = w.grad[a] / (1.0 + nrm)
            nrm = 0.0
            for a in range(m):
                nrm += w.step[a] * w.step[a]
            nrm = sqrt(nrm)
            if nrm > 5.0:
                for a in range(m):
                    w.step[a] *= 5.0 / nrm
                nrm = 5.0
            t = 1.0
            for ls in range(60):
                for a in range(m):
                    w.xi2[a] = w.xi[a] + t * w.step[a]
                valn = eng_psi(e, w.xi2, sh.r0, sh.eta, sh.Z, sh.H, w.grad2, w.hess2, w.sbar)
                if valn >= val - 1e-13 * (1.0 + fabs(val)):
                    break
                t *= 0.5
            acc = 0.0
            for a in range(m):
                w.xi[a] = w.xi2[a]
                w.grad[a] = w.grad2[a]
                acc += fabs(w.xi[a])
            for a in range(m * m):
                w.hess[a] = w.hess2[a]
            val = valn
            if t * nrm < 1e-11 * (1.0 + acc):
                break
        for a in range(m):
            sh.cen[j * sh.cw + a] = w.xi[a]
        # Cholesky factor of the inverse of -w.hess
        for a in range(m * m):
            w.hess2[a] = -w.hess[a]
        ok = chol(w.hess2, m)
        if ok:
            for b in range(m):
                for a in range(m):
                    w.step[a] = 1.0 if a == b else 0.0
                chol_solve(w.hess2, m, w.step)
                for a in range(m):
                    w.T1[a * m + b] = w.step[a]
            ok = chol(w.T1, m)
        for a in range(m):
            for b in range(m):
                sh.cen[j * sh.cw + m + a * m + b] = (w.T1[a * m + b] if ok
                                             else (1.0 if a == b else 0.0))
    for a in range(m * m):
        w.Lc[a] = sh.cen[j * sh.cw + m + a]
    lwd = 0.5 * m * log(2.0)
    for a in range(m):
        lwd += log(w.Lc[a * m + a])

    # ---- reference log weight: the mode's value, or the largest node's
    if m > 0 and sh.adapt:
        mx = val
    else:
        mx = -1e300
        for node in range(sh.n_nodes):
            acc = place_node(node, sh.n_q, m, w.idx, sh.gh_x, sh.gh_logw, w.Lc,
                             &sh.cen[j * sh.cw + 0], w.xi) if m > 0 else 0.0
            acc += eng_psi(e, w.xi, sh.r0, sh.eta, sh.Z, sh.H, NULL, NULL, NULL)
            if acc > mx:
                mx = acc

    # ---- one pass over the nodes: likelihood, posterior moments, Price
    # matrix and (unit-level groups) unit gradients, weights unnormalised
    for a in range(d):
        sh.ex[j * d + a] = 0.0
        for b in range(d):
            sh.exx[(j * d + a) * d + b] = 0.0
            w.omacc[a * d + b] = 0.0
    kap = 0.0
    for a in range(q):
        w.k1[a] = 0.0
        for b in range(q):
            w.k2[a * q + b] = 0.0
    e.acc_grad = sh.compute_grad and not e.const_h
    if e.acc_grad or (sh.compute_grad and e.ncens > 0.0):
        for i in range(e.start, e.stop):
            sh.gmu[i] = 0.0
            sh.gws[i] = 0.0
            if e.ghi != NULL:
                e.ghi[i] = 0.0
            for a in range(q):
                sh.gz[i * q + a] = 0.0
    tot = 0.0
    gtq = 0.0
    for node in range(sh.n_nodes):
        acc = place_node(node, sh.n_q, m, w.idx, sh.gh_x, sh.gh_logw, w.Lc,
                         &sh.cen[j * sh.cw + 0], w.xi) if m > 0 else 0.0
        # the node's weight is known once log p(y | w.xi) is: the node
        # function computes it before its unit loop accumulates gradients
        acc -= 0.5 * m * LOG2PI + mx
        for a in range(m):
            acc -= 0.5 * w.xi[a] * w.xi[a]
        e.lw_off = acc
        if sh.full:
            e.need_hess = 0  # the node pass needs the gradient only
            eng_full_node(e, w.xi, sh.r0, sh.eta, sh.Z, sh.H, True)
            if s > 0:
                gtq += exp(e.logp + acc) * e.sx[q] * w.xi[0] * w.xi[0]
        else:
            eng_node(e, w.xi, sh.r0, sh.eta, sh.Z, sh.H, True)
        wt = exp(e.logp + acc)
        tot += wt
        if sh.compute_grad and e.ncens > 0.0:
            # the interval units' gradients in the mean, eta, z and the upper
            # limit, from eng_cens_logp
            for i in range(e.start, e.stop):
                if e.cs[i] != 0.0:
                    ai = wt * (e.w[i] if e.w != NULL else 1.0)
                    sh.gmu[i] -= ai * (e.aw[i] + e.aw2[i]) * e.invd[i]
                    sh.gws[i] -= ai * 0.5 * (e.aw[i] * e.rw[i] + e.aw2[i] * e.rw2[i])
                    e.ghi[i] += ai * e.aw[i] * e.invd[i]
                    for a in range(q):
                        sh.gz[i * q + a] -= ai * (e.aw[i] + e.aw2[i]) * e.invd[i] * e.mu[a]
        for a in range(d * d):
            w.omacc[a] += wt * e.om[a]
        for a in range(q):
            sh.ex[j * d + a] += wt * e.mu[a]
            for b in range(q):
                sh.exx[(j * d + a) * d + b] += wt * (e.mu[a] * e.mu[b] + e.pinv[a * q + b])
            for b in range(s):
                sh.exx[(j * d + a) * d + q + b] += wt * e.mu[a] * e.v[b]
                sh.exx[(j * d + q + b) * d + a] += wt * e.mu[a] * e.v[b]
        for a in range(s):
            sh.ex[j * d + q + a] += wt * e.v[a]
            for b in range(s):
                sh.exx[(j * d + q + a) * d + q + b] += wt * e.v[a] * e.v[b]
        if sh.compute_grad and e.const_h:
            acc = 0.0
            for a in range(s):
                acc += e.h[a] * e.v[a]
            acc = wt * exp(-acc)
            kap += acc
            for a in range(q):
                w.k1[a] += acc * e.mu[a]
                for b in range(q):
                    w.k2[a * q + b] += acc * (e.mu[a] * e.mu[b] + e.pinv[a * q + b])
    sh.ll[j] = lwd + mx + log(tot)
    for a in range(d):
        sh.ex[j * d + a] /= tot
        for b in range(d):
            sh.exx[(j * d + a) * d + b] /= tot
            w.omacc[a * d + b] /= tot
    kap /= tot
    for a in range(q):
        w.k1[a] /= tot
        for b in range(q):
            w.k2[a * q + b] /= tot
    sh.dtq[j] = gtq / tot
    for a in range(d):
        for b in range(d):
            if b > a:
                sh.dL[(j * d + a) * d + b] = 0.0
            elif sh.full:
                sh.dL[(j * d + a) * d + b] = w.omacc[a * d + b]
            else:
                acc = 0.0
                for k in range(d):
                    acc += w.omacc[a * d + k] * e.Lf[k * d + b]
                sh.dL[(j * d + a) * d + b] = acc
    if sh.compute_grad and e.ncens > 0.0:
        for i in range(e.start, e.stop):
            if e.cs[i] != 0.0:
                sh.gmu[i] /= tot
                sh.gws[i] /= tot
                e.ghi[i] /= tot
                for a in range(q):
                    sh.gz[i * q + a] /= tot
    if sh.compute_grad and e.const_h:
        if e.cs == NULL and q == 1:
            unit_grads(e, w, sh, kap, False, True)  # the common case
        else:
            unit_grads(e, w, sh, kap, e.cs != NULL, q == 1)
    elif sh.compute_grad:
        for i in range(e.start, e.stop):
            if e.cs != NULL and e.cs[i] != 0.0:
                continue
            sh.gmu[i] /= tot
            sh.gws[i] = 0.5 * (sh.gws[i] / tot - (e.w[i] if e.w != NULL else 1.0))
            for a in range(q):
                sh.gz[i * q + a] /= tot


cdef eng_intervals(Eng* e, const double[::1] cens, const double[::1] iv_lo,
                   const double[::1] iv_hi, int link, double[::1] uw):
    """Point ``e`` at the interval units (``uw``: 6 n_obs doubles of unit work)."""
    cdef Py_ssize_t n = cens.shape[0]
    if iv_lo is None or iv_hi is None or iv_lo.shape[0] != n or iv_hi.shape[0] != n:
        raise ValueError("the kernel: cens, iv_lo and iv_hi need one entry per unit")
    e.cs = &cens[0]
    e.ivlo = &iv_lo[0]
    e.ivhi = &iv_hi[0]
    e.link = link
    e.aw2 = &uw[3 * n]
    e.rw2 = &uw[4 * n]
    e.seta = &uw[5 * n]


cdef struct Linear:
    const double* y
    const double* X
    const double* beta
    const double* W
    const double* tau
    double* r0
    double* eta
    double* xg
    Py_ssize_t n
    int p
    int k


cdef void linear_predictors(Linear* lin, Shared* sh, Py_ssize_t start,
                            Py_ssize_t stop) noexcept nogil:
    """r0 = y - X beta and eta = W tau on the rows of one group."""
    cdef Py_ssize_t i, n = lin.n
    cdef int a
    cdef double acc
    for i in range(start, stop):
        acc = lin.y[i]
        for a in range(lin.p):
            acc -= lin.X[a * n + i] * lin.beta[a]
        lin.r0[i] = acc
        acc = 0.0
        for a in range(lin.k):
            acc += lin.W[a * n + i] * lin.tau[a]
        lin.eta[i] = acc


cdef void gradient_sums(Linear* lin, Shared* sh, Py_ssize_t start, Py_ssize_t stop,
                        Py_ssize_t j) noexcept nogil:
    """Group j's X_j' g_mu and W_j' g_ws."""
    cdef Py_ssize_t i, n = lin.n
    cdef int a, width = lin.p + lin.k
    cdef double acc
    for a in range(lin.p):
        acc = 0.0
        for i in range(start, stop):
            acc += lin.X[a * n + i] * sh.gmu[i]
        lin.xg[j * width + a] = acc
    for a in range(lin.k):
        acc = 0.0
        for i in range(start, stop):
            acc += lin.W[a * n + i] * sh.gws[i]
        lin.xg[j * width + lin.p + a] = acc


def engine_loglik(
    const double[::1] r0,
    const double[::1] eta,
    const double[:, ::1] Z,
    const double[:, ::1] H,
    const unsigned char[::1] h_const,
    const Py_ssize_t[::1] group_ptr,
    const double[:, ::1] Kvv,
    const double[:, ::1] Kuv,
    const double[:, ::1] C,
    const double[:, ::1] L,
    double tau_q,
    bint full,
    const double[::1] gh_x,
    const double[::1] gh_logw,
    double[::1] ll,
    double[:, ::1] ex,
    double[:, :, ::1] exx,
    double[:, :, ::1] dL,
    double[::1] dtq,
    double[:, ::1] centers,
    double[::1] g_mu,
    double[::1] g_ws,
    double[:, ::1] g_z,
    bint adapt=True,
    bint compute_grad=True,
    int n_threads=0,
    const double[::1] w=None,
    const double[::1] cens=None,
    const double[::1] iv_lo=None,
    const double[::1] iv_hi=None,
    int link=0,
    double[::1] g_hi=None,
    const double[::1] y=None,
    const double[::1, :] X=None,
    const double[::1] beta=None,
    const double[::1, :] W=None,
    const double[::1] tau=None,
    double[:, ::1] xg=None,
):
    """The kernel: per-group log-likelihood, posterior moments and gradients.

    Two integrands share one loop (mode search, node placement, weights):
    ``full=False`` integrates the location effects u exactly given the scale
    effects and takes s-D adaptive Gauss-Hermite quadrature over the
    standardised scale effects xi; ``full=True`` takes (q + s)-D adaptive
    quadrature over all standardised effects theta, x = L theta (plus
    ``tau_q theta0^2`` on the first scale effect: the quadratic association).

    Parameters
    ----------
    r0, eta : (n_obs,) float64
        Residual y - x'beta and WS log-variance w'tau, sorted by group.
    Z : (n_obs, q) float64
        Location design (with a BS variance function: scaled by sigma_u,ij).
    H : (n_obs, s) float64
        Scale design: log sigma2_ij = eta_ij + h_ij' v_j.
    h_const : (n_groups,) uint8
        1 where H is the same on every row of the group: then the per-node
        work uses per-group sums and is O(q^3), else O(n_j).
    group_ptr : (n_groups + 1,) intp
    Kvv, Kuv, C : (s, s), (q, s), (q, q) float64
        Scale-first Cholesky factor of the covariance of (u, v):
        v = Kvv xi, u = Kuv xi + C zeta; they may be singular.
    L : (d, d) float64
        Location-first Cholesky factor of the same covariance.
    tau_q : float
        Quadratic association (full integrand only).
    full : bool
        Which integrand (see above).
    gh_x, gh_logw : (Q,) Gauss-Hermite rule for exp(-x^2)
    ll : (n_groups,) output
    ex, exx : (n_groups, d), (n_groups, d, d) output
        Posterior E[x] and E[x x'] of x = (u, v), d = q + s.
    dL : (n_groups, d, d) output
        Gradient of the log-likelihood in the entries of L.  Exact location:
        Price's identity, d ll_j / d Sigma = E[s s' + H] / 2 with s, H the
        gradient and Hessian of log p(y | x), so dL = E[s s' + H] L.  Full:
        E[s theta'] (nodes fixed in theta).
    dtq : (n_groups,) output
        Gradient in tau_q (full integrand; 0 otherwise).
    centers : (n_groups, m + m*m) in/out
        Mode and Cholesky scale of the node placement (m = s, or d if full).
    g_mu, g_ws : (n_obs,) output
        Gradient of the log-likelihood in the mean and in eta.
    g_z : (n_obs, q) output
        Gradient in the rows of Z.
    adapt : bool
        Place the nodes anew (mode search from ``centers``); else keep them.
    compute_grad : bool
        Also the gradients (else dL, dtq and the unit gradients are not set).
    n_threads : int
        Threads over groups (0: OpenMP's default; 1 without OpenMP).
    w : (n_obs,) float64, optional
        Unit weights: unit i's log-density counts w_i times (default all 1).
    cens, iv_lo, iv_hi : (n_obs,) float64, optional
        Interval units (censored or ordinal outcomes): ``cens`` != 0 marks
        them; their latent outcome lies in (lo, hi], and ``iv_lo``, ``iv_hi``
        are the limits less x'beta (-inf / +inf for an open side).  Needs the
        full integrand.
    link : int
        The interval units' distribution: 0 normal (probit), 1 logistic (logit).
    g_hi : (n_obs,) output, optional
        Gradient in ``iv_hi`` of each interval unit (0 elsewhere); the gradient
        in ``iv_lo`` is -g_mu - g_hi.
    y, X, beta, W, tau : optional
        With ``y``: ``r0`` and ``eta`` are outputs, computed group by group in
        the parallel loop as ``y - X beta`` and ``W tau`` (X and W column-major),
        so that no serial pass over the units precedes the kernel.
    xg : (n_groups, p + k) output, optional
        With ``y`` and ``compute_grad``: each group's sums X_j' g_mu and
        W_j' g_ws (summed over groups in a fixed order by the caller).
    """
    cdef int q = Z.shape[1], s = H.shape[1]
    cdef int d = q + s
    cdef int m = d if full else s
    cdef int n_q = gh_x.shape[0]
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef Py_ssize_t j, n_nodes = 1
    cdef int a
    cdef Eng e, le
    cdef Eng* ep
    cdef Shared sh
    cdef Work wk
    cdef double *buf
    cdef double *p
    cdef double[::1] uw
    cdef int nt = n_threads if n_threads > 0 else melsml_max_threads()
    if (Kvv.shape[0] != s or Kuv.shape[0] != q or Kuv.shape[1] != s or C.shape[0] != q
            or L.shape[0] != d or L.shape[1] != d):
        raise ValueError("engine_loglik: factor shapes do not match Z and H")
    if centers.shape[1] != m + m * m:
        raise ValueError("engine_loglik: centers must have m + m*m columns")
    for a in range(m):
        n_nodes *= n_q
    cdef Py_ssize_t n_buf = eng_work_size(q, s, n_nodes)
    if w is not None and w.shape[0] != r0.shape[0]:
        raise ValueError("engine_loglik: w must have one weight per unit")
    # per-unit work: 3 arrays, 6 with interval units
    uw = np.empty((6 if cens is not None else 3) * r0.shape[0] + 1, dtype=np.float64)
    eng_init(&e, q, s, &Kvv[0, 0] if s > 0 else NULL, &Kuv[0, 0] if s > 0 else NULL,
             &C[0, 0], &w[0] if w is not None else NULL, &uw[0], r0.shape[0])
    e.Lf = &L[0, 0]
    e.tau_q = tau_q
    e.full = full
    e.gmu = &g_mu[0]
    e.gws = &g_ws[0]
    e.gz = &g_z[0, 0]
    if cens is not None:
        if g_hi is None or g_hi.shape[0] != r0.shape[0]:
            raise ValueError("engine_loglik: g_hi needs one entry per unit")
        if not full:
            raise ValueError("engine_loglik: interval units need the full integrand")
        eng_intervals(&e, cens, iv_lo, iv_hi, link, uw)
        e.ghi = &g_hi[0]
    sh.gptr = &group_ptr[0]
    sh.hc = &h_const[0]
    sh.r0 = &r0[0]
    sh.eta = &eta[0]
    sh.Z = &Z[0, 0]
    sh.H = &H[0, 0] if s > 0 else NULL
    sh.gh_x = &gh_x[0]
    sh.gh_logw = &gh_logw[0]
    sh.n_q = n_q
    sh.n_nodes = n_nodes
    sh.m = m
    sh.adapt = adapt
    sh.compute_grad = compute_grad
    sh.full = full
    sh.ll = &ll[0]
    sh.ex = &ex[0, 0]
    sh.exx = &exx[0, 0, 0]
    sh.dL = &dL[0, 0, 0]
    sh.dtq = &dtq[0]
    sh.cen = &centers[0, 0] if centers.shape[1] > 0 else NULL
    sh.cw = m + m * m
    sh.gmu = &g_mu[0]
    sh.gws = &g_ws[0]
    sh.gz = &g_z[0, 0]
    cdef Linear lin
    lin.y = NULL
    lin.xg = NULL
    if y is not None:
        if (X is None or W is None or beta is None or tau is None
                or X.shape[0] != r0.shape[0] or W.shape[0] != r0.shape[0]
                or y.shape[0] != r0.shape[0] or X.shape[1] != beta.shape[0]
                or W.shape[1] != tau.shape[0] or X.shape[1] == 0 or W.shape[1] == 0):
            raise ValueError("engine_loglik: y needs X, beta, W and tau of matching shapes")
        if cens is not None:
            raise ValueError("engine_loglik: interval units take r0 and eta as inputs")
        lin.y = &y[0]
        lin.X = &X[0, 0]
        lin.beta = &beta[0]
        lin.W = &W[0, 0]
        lin.tau = &tau[0]
        lin.r0 = <double*> &r0[0]
        lin.eta = <double*> &eta[0]
        lin.n = r0.shape[0]
        lin.p = X.shape[1]
        lin.k = W.shape[1]
        if xg is not None and compute_grad:
            if xg.shape[0] != n_groups or xg.shape[1] != lin.p + lin.k:
                raise ValueError("engine_loglik: xg must be (n_groups, p + k)")
            lin.xg = &xg[0, 0]
    with nogil, parallel(num_threads=nt):
        # each thread: its own copy of the Eng and its own work arrays
        buf = <double*> malloc(n_buf * sizeof(double))
        le = e
        ep = &le
        p = eng_bind(ep, buf)
        wk = eng_work(p, q, d)
        for j in prange(n_groups, schedule="dynamic"):
            if lin.y != NULL:
                linear_predictors(&lin, &sh, group_ptr[j], group_ptr[j + 1])
            eng_one_group(ep, &wk, &sh, j)
            if lin.xg != NULL:
                gradient_sums(&lin, &sh, group_ptr[j], group_ptr[j + 1], j)
        free(wk.idx)
        free(buf)


def engine_points(
    const double[::1] r0,
    const double[::1] eta,
    const double[:, ::1] Z,
    const double[:, ::1] H,
    const unsigned char[::1] h_const,
    const Py_ssize_t[::1] group_ptr,
    const double[:, ::1] Kvv,
    const double[:, ::1] Kuv,
    const double[:, ::1] C,
    const double[:, :, ::1] points,
    double[:, ::1] logpsi,
    double[:, :, ::1] mu,
    double[:, :, :, ::1] pinv,
    double[:, :, ::1] v,
    const double[::1] w=None,
    int n_threads=0,
):
    """The exact-location integrand at given points: for empirical Bayes grids
    (groups in parallel: ``n_threads``, 0 for OpenMP's default).

    Parameters
    ----------
    r0 ... C : as :func:`engine_loglik`
    points : (n_groups, P, s) float64
        Standardised scale effects xi at which to evaluate, per group.
    logpsi : (n_groups, P) output
        Log integrand log p(y | xi) + log N(xi; 0, I).
    mu, pinv : (n_groups, P, q), (n_groups, P, q, q) output
        Posterior mean and covariance of u given xi.
    v : (n_groups, P, s) output
        The scale effects v = Kvv xi.
    """
    cdef int q = Z.shape[1], s = H.shape[1]
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef Py_ssize_t n_pts = points.shape[1]
    cdef Py_ssize_t j, k
    cdef int a, b
    cdef Eng e, le
    cdef Eng* ep
    cdef double[::1] work
    cdef double *buf
    cdef const double *pH
    cdef int nt = n_threads if n_threads > 0 else melsml_max_threads()
    cdef Py_ssize_t n_buf = eng_work_size(q, s, 1)
    if points.shape[0] != n_groups or points.shape[2] != s:
        raise ValueError("engine_points: points must have shape (n_groups, P, s)")
    if w is not None and w.shape[0] != r0.shape[0]:
        raise ValueError("engine_points: w must have one weight per unit")
    work = np.zeros(3 * r0.shape[0] + 1)
    eng_init(&e, q, s, &Kvv[0, 0] if s > 0 else NULL, &Kuv[0, 0] if s > 0 else NULL,
             &C[0, 0], &w[0] if w is not None else NULL, &work[0], r0.shape[0])
    pH = &H[0, 0] if s > 0 else NULL
    with nogil, parallel(num_threads=nt):
        # each thread: its own copy of the Eng and its own work arrays
        buf = <double*> malloc(n_buf * sizeof(double))
        le = e
        ep = &le
        eng_bind(ep, buf)
        for j in prange(n_groups, schedule="dynamic"):
            eng_group(ep, group_ptr[j], group_ptr[j + 1], h_const[j] if s > 0 else 1,
                      &r0[0], &eta[0], &Z[0, 0], pH)
            for k in range(n_pts):
                logpsi[j, k] = eng_psi(ep, &points[j, k, 0] if s > 0 else NULL, &r0[0],
                                       &eta[0], &Z[0, 0], pH, NULL, NULL, NULL)
                for a in range(q):
                    mu[j, k, a] = ep.mu[a]
                    for b in range(q):
                        pinv[j, k, a, b] = ep.pinv[a * q + b]
                for a in range(s):
                    v[j, k, a] = ep.v[a]
        free(buf)


def engine_points_full(
    const double[::1] r0,
    const double[::1] eta,
    const double[:, ::1] Z,
    const double[:, ::1] H,
    const unsigned char[::1] h_const,
    const Py_ssize_t[::1] group_ptr,
    const double[:, ::1] L,
    double tau_q,
    const double[:, :, ::1] points,
    double[:, ::1] logpsi,
    double[:, :, ::1] x,
    const double[::1] w=None,
    const double[::1] cens=None,
    const double[::1] iv_lo=None,
    const double[::1] iv_hi=None,
    int link=0,
    int n_threads=0,
):
    """The full integrand at given points: for empirical Bayes grids where the
    location effects are not normal given the scale effects (censored and
    ordinal outcomes, the quadratic association).

    Parameters
    ----------
    r0 ... h_const, group_ptr, L, tau_q, w, cens, iv_lo, iv_hi, link
        As :func:`engine_loglik` with ``full=True``.
    points : (n_groups, P, d) float64
        Standardised effects theta at which to evaluate, per group.
    logpsi : (n_groups, P) output
        Log integrand log p(y | x) + log N(theta; 0, I).
    x : (n_groups, P, d) output
        The effects x = (u, v) = L theta (+ tau_q theta0^2 on the first scale effect).
    n_threads : int
        Threads over groups (0: OpenMP's default).
    """
    cdef int q = Z.shape[1], s = H.shape[1]
    cdef int d = q + s
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef Py_ssize_t n_pts = points.shape[1]
    cdef Py_ssize_t j, k
    cdef int a
    cdef Eng e, le
    cdef Eng* ep
    cdef double *buf
    cdef double[::1] uw
    cdef double[:, ::1] dummy = np.zeros((1, 1))
    cdef int nt = n_threads if n_threads > 0 else melsml_max_threads()
    cdef Py_ssize_t n_buf = eng_work_size(q, s, 1)
    if points.shape[0] != n_groups or points.shape[2] != d:
        raise ValueError("engine_points_full: points must have shape (n_groups, P, q + s)")
    if L.shape[0] != d or L.shape[1] != d:
        raise ValueError("engine_points_full: L must be (q + s) x (q + s)")
    if w is not None and w.shape[0] != r0.shape[0]:
        raise ValueError("engine_points_full: w must have one weight per unit")
    uw = np.empty(6 * r0.shape[0] + 1, dtype=np.float64)
    eng_init(&e, q, s, &dummy[0, 0], &dummy[0, 0], &dummy[0, 0],
             &w[0] if w is not None else NULL, &uw[0], r0.shape[0])
    e.Lf = &L[0, 0]
    e.tau_q = tau_q
    e.full = 1
    e.need_hess = 0
    if cens is not None:
        eng_intervals(&e, cens, iv_lo, iv_hi, link, uw)
    with nogil, parallel(num_threads=nt):
        buf = <double*> malloc(n_buf * sizeof(double))
        le = e
        ep = &le
        eng_bind(ep, buf)
        for j in prange(n_groups, schedule="dynamic"):
            eng_group(ep, group_ptr[j], group_ptr[j + 1], h_const[j] if s > 0 else 1,
                      &r0[0], &eta[0], &Z[0, 0], &H[0, 0] if s > 0 else NULL)
            for k in range(n_pts):
                eng_full_node(ep, &points[j, k, 0], &r0[0], &eta[0], &Z[0, 0],
                              &H[0, 0] if s > 0 else NULL, False)
                logpsi[j, k] = ep.logp - 0.5 * d * LOG2PI
                for a in range(d):
                    logpsi[j, k] -= 0.5 * points[j, k, a] * points[j, k, a]
                    x[j, k, a] = ep.x[a]
        free(buf)


# ---- the closed-form Hessian's passes over the units (melsml.hessian) -----------

cdef inline void design_row(const double* X, const double* XB, const double* W,
                            Py_ssize_t n, int p, int kb, int k, Py_ssize_t i,
                            double* dv) noexcept nogil:
    """Unit i's row of the coefficients' design: x_i (mu), xb_i / 2 (zeta), s_i (eta)."""
    cdef int c
    for c in range(p):
        dv[c] = X[c * n + i]
    for c in range(kb):
        dv[p + c] = 0.5 * XB[c * n + i]
    for c in range(k):
        dv[p + kb + c] = W[c * n + i]


def hessian_sums(
    const double[::1] r,
    const double[::1] a,
    const double[::1] z,
    const double[::1, :] X,
    const double[::1, :] XB,
    const double[::1, :] W,
    const Py_ssize_t[::1] group_ptr,
    double[:, ::1] sums,
    double[:, :, ::1] jac,
    const double[::1] w=None,
    int n_threads=0,
):
    """Each school's sums N, A, b, l (``sums``, (n_groups, 4)) and the gradients
    of A, b, l and S = sum w eta in the coefficients (beta, alpha, tau)
    (``jac``, (n_groups, 4, p + kb + k)), from the units' residuals r_i = y_i -
    x_i'beta, weights a_i = w_i exp(-s_i'tau) and z_i (exp(xb_i'alpha / 2) with
    a BS design ``XB``, else the data and XB without columns): A = sum a r^2,
    b = sum a z r, l = sum a z^2."""
    cdef Py_ssize_t n = r.shape[0], n_groups = group_ptr.shape[0] - 1, j, i
    cdef int p = X.shape[1], k = W.shape[1], kb = XB.shape[1], c, e, u
    cdef int kl = p + kb + k
    cdef double ai, ri, wi, az, ar, zi, s0, s1, s2, s3
    cdef double* J
    if (X.shape[0] != n or W.shape[0] != n or z.shape[0] != n or XB.shape[0] != n
            or a.shape[0] != n or sums.shape[0] != n_groups or sums.shape[1] != 4
            or jac.shape[0] != n_groups or jac.shape[1] != 4 or jac.shape[2] != kl
            or (w is not None and w.shape[0] != n)):
        raise ValueError("hessian_sums: shapes do not match")
    cdef const double* wp = &w[0] if w is not None else NULL
    cdef const double* Xp = &X[0, 0] if p > 0 else NULL
    cdef const double* Wp = &W[0, 0] if k > 0 else NULL
    cdef const double* XBp = &XB[0, 0] if kb > 0 else NULL
    cdef double d
    cdef int nt = n_threads if n_threads > 0 else melsml_max_threads()
    with nogil, parallel(num_threads=nt):
        for j in prange(n_groups, schedule="dynamic"):
            J = &jac[j, 0, 0]
            for u in range(4 * kl):
                J[u] = 0.0
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            for i in range(group_ptr[j], group_ptr[j + 1]):
                ai = a[i]
                ri = r[i]
                zi = z[i]
                wi = wp[i] if wp != NULL else 1.0
                az = ai * zi
                ar = ai * ri
                s0 = s0 + wi
                s1 = s1 + ar * ri
                s2 = s2 + az * ri
                s3 = s3 + az * zi
                # rows A, b, l, S of jac: d(A, b, l, S) / d(mu, zeta, eta) of the
                # unit times its design row (x_i, xb_i / 2, s_i)
                for c in range(p):
                    d = Xp[c * n + i]
                    J[c] += -2.0 * ar * d
                    J[kl + c] += -az * d
                for c in range(kb):
                    d = 0.5 * XBp[c * n + i]
                    J[kl + p + c] += az * ri * d
                    J[2 * kl + p + c] += 2.0 * az * zi * d
                for c in range(k):
                    d = Wp[c * n + i]
                    e = p + kb + c
                    J[e] += -ar * ri * d
                    J[kl + e] += -az * ri * d
                    J[2 * kl + e] += -az * zi * d
                    J[3 * kl + e] += wi * d
            sums[j, 0] = s0
            sums[j, 1] = s1
            sums[j, 2] = s2
            sums[j, 3] = s3


def hessian_gram(
    const double[::1] r,
    const double[::1] a,
    const double[::1] z,
    const double[::1, :] X,
    const double[::1, :] XB,
    const double[::1, :] W,
    const Py_ssize_t[::1] group_ptr,
    const double[:, ::1] gamma,
    double[:, ::1] out,
    int n_threads=0,
):
    """Each school's sum over its units of D_i' H_i D_i, its upper triangle
    (``out``, (n_groups, kl * kl), row-major; the rest left 0): H_i = sum_c gamma_jc
    H_i^c, the Hessians of unit i's terms of A, b and l in (mu, zeta, eta)
    weighted by the school's ``gamma`` ((n_groups, 3)), D_i the design rows
    (x_i for mu = x'beta, xb_i / 2 for zeta, s_i for eta = s'tau); r, a and z
    as :func:`hessian_sums`.  The caller sums the schools in a fixed order."""
    cdef Py_ssize_t n = r.shape[0], n_groups = group_ptr.shape[0] - 1, j, i
    cdef int p = X.shape[1], k = W.shape[1], kb = XB.shape[1], c, e, u
    cdef int kl = p + kb + k
    cdef double ai, ri, az, gA, gb, gl, zi, hd
    cdef double* h
    cdef double* O
    cdef double* dv
    if (X.shape[0] != n or W.shape[0] != n or z.shape[0] != n or XB.shape[0] != n
            or a.shape[0] != n or gamma.shape[0] != n_groups or gamma.shape[1] != 3
            or out.shape[0] != n_groups or out.shape[1] != kl * kl):
        raise ValueError("hessian_gram: shapes do not match")
    cdef const double* Xp = &X[0, 0] if p > 0 else NULL
    cdef const double* Wp = &W[0, 0] if k > 0 else NULL
    cdef const double* XBp = &XB[0, 0] if kb > 0 else NULL
    cdef int nt = n_threads if n_threads > 0 else melsml_max_threads()
    with nogil, parallel(num_threads=nt):
        # each thread: its own unit Hessian and design row
        h = <double*> malloc(6 * sizeof(double))
        dv = <double*> malloc(kl * sizeof(double))
        for j in prange(n_groups, schedule="dynamic"):
            O = &out[j, 0]
            for u in range(kl * kl):
                O[u] = 0.0
            gA = gamma[j, 0]
            gb = gamma[j, 1]
            gl = gamma[j, 2]
            for i in range(group_ptr[j], group_ptr[j + 1]):
                ai = a[i]
                ri = r[i]
                zi = z[i]
                az = ai * zi
                # the unit's Hessian in (mu, zeta, eta), weighted by the school's gamma
                h[0] = 2.0 * gA * ai
                h[1] = -gb * az
                h[2] = 2.0 * gA * ai * ri + gb * az
                h[3] = gb * az * ri + 4.0 * gl * az * zi
                h[4] = -gb * az * ri - 2.0 * gl * az * zi
                h[5] = gA * ai * ri * ri + gb * az * ri + gl * az * zi
                design_row(Xp, XBp, Wp, n, p, kb, k, i, dv)
                # blocks of the upper triangle, by the pair of slots
                for c in range(p):
                    hd = dv[c]
                    for e in range(c, p):
                        O[c * kl + e] += h[0] * hd * dv[e]
                    for e in range(p, p + kb):
                        O[c * kl + e] += h[1] * hd * dv[e]
                    for e in range(p + kb, kl):
                        O[c * kl + e] += h[2] * hd * dv[e]
                for c in range(p, p + kb):
                    hd = dv[c]
                    for e in range(c, p + kb):
                        O[c * kl + e] += h[3] * hd * dv[e]
                    for e in range(p + kb, kl):
                        O[c * kl + e] += h[4] * hd * dv[e]
                for c in range(p + kb, kl):
                    hd = h[5] * dv[c]
                    for e in range(c, kl):
                        O[c * kl + e] += hd * dv[e]
        free(dv)
        free(h)
