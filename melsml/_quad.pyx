# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled per-group likelihood kernel for MELS models.

The kernel works on contiguous float64 arrays of linear predictors and group
offsets, releases the GIL, and writes into preallocated outputs.  Its readable
specification and test oracle is :mod:`melsml._quad_ref`; the mathematics is
in ``MODELS.md`` sections 4.1-4.2 and in the docstring of that module.

Modes
-----
0  no random scale: closed form (omega = 0, theta1 ~ N(0, 1)).
1  exact location: theta1 integrated in closed form given omega, omega by
   1-D adaptive Gauss-Hermite quadrature (linear association only).
2  general 2-D adaptive Gauss-Hermite quadrature over (theta1, theta2), with
   the node grid rotated by the Cholesky factor of the inverse negative
   Hessian at the mode (any association, including quadratic).
"""

from libc.math cimport exp, log, sqrt, fabs, M_PI

import numpy as np

cdef double LOG2PI = log(2.0 * M_PI)
cdef int N_MOM = 8   # E th1, E th1^2, E om, E om^2, E th1*om, E k, E k th1, E k th1^2
cdef int N_CEN = 5   # mode (1 or 2 coords), scale: sd (1-D) or L11, L21, L22 (2-D)


cdef struct Stats:
    double n
    double sumlogd
    double lam
    double b0
    double W


cdef struct RParams:
    double tau_l
    double tau_q
    double sigma_omega
    double V
    double g
    double S


# ---------------------------------------------------------------- 1-D (exact location)
cdef inline double h1(double om, Stats* st, RParams* p, double* d1, double* d2) noexcept nogil:
    """Log integrand over omega (log f(y|omega) + log N(omega; 0, V)) and its derivatives."""
    cdef double eo = exp(om)
    cdef double k = 1.0 / eo
    cdef double lam = st.lam
    cdef double E = eo + p.S * lam
    cdef double b = st.b0 - lam * p.g * om
    cdef double F = (st.n - 1.0) * om + log(E) + k * st.W + b * b / (lam * E)
    cdef double F1 = ((st.n - 1.0) + eo / E - k * st.W - 2.0 * p.g * b / E
                      - b * b * eo / (lam * E * E))
    cdef double F2 = (p.S * lam * eo / (E * E) + k * st.W + 2.0 * p.g * p.g * lam / E
                      + 4.0 * p.g * b * eo / (E * E)
                      - b * b * eo * (E - 2.0 * eo) / (lam * E * E * E))
    d1[0] = -0.5 * F1 - om / p.V
    d2[0] = -0.5 * F2 - 1.0 / p.V
    return (-0.5 * (st.n * LOG2PI + st.sumlogd + F) - 0.5 * om * om / p.V
            - 0.5 * log(2.0 * M_PI * p.V))


cdef inline double mode1(double x, Stats* st, RParams* p, double* curv) noexcept nogil:
    """Safeguarded Newton ascent for the mode of h1 starting at x."""
    cdef double d1, d2, h, hn, step, t, dd1, dd2
    cdef int it, ls
    h = h1(x, st, p, &d1, &d2)
    for it in range(200):
        if d2 < 0.0:
            step = -d1 / d2
        else:
            step = 1.0 if d1 > 0.0 else -1.0
        if step > 5.0:
            step = 5.0
        elif step < -5.0:
            step = -5.0
        t = 1.0
        for ls in range(60):
            hn = h1(x + t * step, st, p, &dd1, &dd2)
            if hn >= h - 1e-13 * (1.0 + fabs(h)):
                break
            t *= 0.5
        x = x + t * step
        h = hn
        d1 = dd1
        d2 = dd2
        if fabs(t * step) < 1e-11 * (1.0 + fabs(x)):
            break
    curv[0] = d2
    return x


# ---------------------------------------------------------------- 2-D (general AGHQ)
cdef inline double h2(double u, double v, Stats* st, RParams* p,
                      double* g, double* H) noexcept nogil:
    """Log integrand over standardised (theta1, theta2) and its gradient/Hessian.

    H holds (h_uu, h_uv, h_vv)."""
    cdef double om = p.tau_l * u + p.tau_q * u * u + p.sigma_omega * v
    cdef double k = exp(-om)
    cdef double dev = st.b0 - st.lam * u
    cdef double C = st.W + dev * dev / st.lam
    cdef double C1 = -2.0 * dev
    cdef double C2 = 2.0 * st.lam
    cdef double wu = p.tau_l + 2.0 * p.tau_q * u
    cdef double sw = p.sigma_omega
    cdef double F = st.n * om + k * C
    cdef double Fu = st.n * wu - k * wu * C + k * C1
    cdef double Fv = sw * (st.n - k * C)
    cdef double Fuu = (2.0 * st.n * p.tau_q + k * wu * wu * C - 2.0 * p.tau_q * k * C
                       - 2.0 * k * wu * C1 + k * C2)
    cdef double Fuv = sw * (k * wu * C - k * C1)
    cdef double Fvv = sw * sw * k * C
    g[0] = -0.5 * Fu - u
    g[1] = -0.5 * Fv - v
    H[0] = -0.5 * Fuu - 1.0
    H[1] = -0.5 * Fuv
    H[2] = -0.5 * Fvv - 1.0
    return (-0.5 * (st.n * LOG2PI + st.sumlogd + F) - 0.5 * (u * u + v * v) - LOG2PI)


cdef inline void mode2(double* x, Stats* st, RParams* p, double* M) noexcept nogil:
    """Safeguarded Newton ascent for the 2-D mode; M returns -Hessian (m11, m21, m22)."""
    cdef double g[2]
    cdef double H[3]
    cdef double gn[2]
    cdef double Hn[3]
    cdef double h, hn, a, b, c, det, s0, s1, t, nrm
    cdef int it, ls
    h = h2(x[0], x[1], st, p, g, H)
    for it in range(200):
        a = -H[0]
        b = -H[1]
        c = -H[2]
        det = a * c - b * b
        if a > 0.0 and det > 0.0:
            s0 = (c * g[0] - b * g[1]) / det
            s1 = (a * g[1] - b * g[0]) / det
        else:
            nrm = sqrt(g[0] * g[0] + g[1] * g[1])
            s0 = g[0] / (1.0 + nrm)
            s1 = g[1] / (1.0 + nrm)
        nrm = sqrt(s0 * s0 + s1 * s1)
        if nrm > 5.0:
            s0 *= 5.0 / nrm
            s1 *= 5.0 / nrm
        t = 1.0
        for ls in range(60):
            hn = h2(x[0] + t * s0, x[1] + t * s1, st, p, gn, Hn)
            if hn >= h - 1e-13 * (1.0 + fabs(h)):
                break
            t *= 0.5
        x[0] += t * s0
        x[1] += t * s1
        h = hn
        g[0] = gn[0]
        g[1] = gn[1]
        H[0] = Hn[0]
        H[1] = Hn[1]
        H[2] = Hn[2]
        if t * nrm < 1e-11 * (1.0 + fabs(x[0]) + fabs(x[1])):
            break
    M[0] = -H[0]
    M[1] = -H[1]
    M[2] = -H[2]


# ---------------------------------------------------------------- the group loop
def group_loglik(
    const double[::1] r0,
    const double[::1] eta_ws,
    const double[::1] eta_bs,
    const Py_ssize_t[::1] group_ptr,
    int mode,
    double tau_l,
    double tau_q,
    double sigma_omega,
    const double[::1] gh_x,
    const double[::1] gh_logw,
    double[::1] ll,
    double[:, ::1] mom,
    double[:, ::1] grand,
    double[:, ::1] centers,
    double[::1] g_mu,
    double[::1] g_ws,
    double[::1] g_bs,
    double[::1] work,
    bint adapt=True,
    bint compute_grad=True,
):
    """Per-group log-likelihood, posterior moments and gradient contributions.

    Parameters
    ----------
    r0, eta_ws, eta_bs : (n_obs,) float64
        Residual y - x'beta, WS log-variance w'tau, BS log-variance s'alpha,
        sorted by group.
    group_ptr : (n_groups + 1,) int64
        Offsets of the groups in the unit arrays.
    mode : {0, 1, 2}
        Integration mode (see the module docstring).
    tau_l, tau_q, sigma_omega : float
        Location-scale association and random-scale SD (tau_q only in mode 2).
    gh_x, gh_logw : (Q,) float64
        Gauss-Hermite nodes and log weights for the weight exp(-x^2).
    ll : (n_groups,) output
        Per-group log-likelihood.
    mom : (n_groups, 8) output
        Posterior E th1, E th1^2, E om, E om^2, E th1 om, E kappa,
        E kappa th1, E kappa th1^2 (kappa = exp(-omega)).
    grand : (n_groups, 3) output
        Per-group gradient of the log-likelihood in (tau_l, tau_q, sigma_omega).
    centers : (n_groups, 5) in/out
        Node placement: mode and scale.  With ``adapt`` the mode search starts
        here and the result is written back; without, the nodes stay put.
    g_mu, g_ws, g_bs : (n_obs,) output
        Gradient of the log-likelihood in the three linear predictors.
    work : (2 * n_obs,) scratch
    """
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef Py_ssize_t n_q = gh_x.shape[0]
    cdef Py_ssize_t j, i, a, bq, start, stop
    cdef Stats st
    cdef RParams p
    cdef double d, s, r, invd, curv, sd, om, k, E, b, th, P, lw, mx, tot, wgt
    cdef double eS, eg, eo, H, u, v, C, dev, L11, L21, L22, det, i11, i21, i22
    cdef double Hm[3]
    cdef double x[2]
    cdef double A
    cdef double m0, m1, m2, m3, m4, k0, k1, k2, gl, gq, gs, dSl, dSs, dgl, dgs
    cdef double[::1] inv_d = work[:r0.shape[0]]
    cdef double[::1] sig = work[r0.shape[0]:]
    cdef double[::1] lwbuf
    import numpy as np
    lwbuf = np.empty(n_q * n_q, dtype=np.float64)

    p.tau_l = tau_l
    p.tau_q = tau_q
    p.sigma_omega = sigma_omega
    p.V = tau_l * tau_l + sigma_omega * sigma_omega
    if mode == 1:
        if p.V <= 0.0:
            raise ValueError("mode 1 needs tau_l^2 + sigma_omega^2 > 0")
        p.g = tau_l / p.V
        p.S = sigma_omega * sigma_omega / p.V
    else:
        p.g = 0.0
        p.S = 1.0

    with nogil:
        for j in range(n_groups):
            start = group_ptr[j]
            stop = group_ptr[j + 1]
            st.n = <double>(stop - start)
            st.sumlogd = 0.0
            st.lam = 0.0
            st.b0 = 0.0
            A = 0.0
            for i in range(start, stop):
                invd = exp(-eta_ws[i])
                s = exp(0.5 * eta_bs[i])
                r = r0[i]
                inv_d[i] = invd
                sig[i] = s
                st.sumlogd += eta_ws[i]
                st.lam += s * s * invd
                st.b0 += s * r * invd
                A += r * r * invd
            st.W = A - st.b0 * st.b0 / st.lam
            if st.W < 0.0:
                st.W = 0.0

            m0 = m1 = m2 = m3 = m4 = k0 = k1 = k2 = 0.0
            gl = gq = gs = 0.0
            if mode == 0:
                P = 1.0 / (1.0 + st.lam)
                th = P * st.b0
                ll[j] = -0.5 * (st.n * LOG2PI + st.sumlogd + log(1.0 + st.lam)
                                + A - st.b0 * st.b0 * P)
                m0 = th
                m1 = th * th + P
                k0 = 1.0
                k1 = th
                k2 = m1
                centers[j, 0] = th
                centers[j, 2] = sqrt(P)
            elif mode == 1:
                if adapt:
                    om = mode1(centers[j, 0], &st, &p, &curv)
                    centers[j, 0] = om
                    centers[j, 2] = 1.0 / sqrt(-curv) if curv < 0.0 else sqrt(p.V)
                sd = centers[j, 2]
                mx = -1e300
                for a in range(n_q):
                    om = centers[j, 0] + 1.4142135623730951 * sd * gh_x[a]
                    lw = gh_logw[a] + gh_x[a] * gh_x[a] + h1(om, &st, &p, &curv, &curv)
                    lwbuf[a] = lw
                    if lw > mx:
                        mx = lw
                tot = 0.0
                for a in range(n_q):
                    lwbuf[a] = exp(lwbuf[a] - mx)
                    tot += lwbuf[a]
                ll[j] = log(1.4142135623730951 * sd) + mx + log(tot)
                eS = eg = 0.0
                for a in range(n_q):
                    wgt = lwbuf[a] / tot
                    om = centers[j, 0] + 1.4142135623730951 * sd * gh_x[a]
                    eo = exp(om)
                    k = 1.0 / eo
                    E = eo + p.S * st.lam
                    b = st.b0 - st.lam * p.g * om
                    th = p.g * om + p.S * b / E
                    P = p.S * eo / E
                    m0 += wgt * th
                    m1 += wgt * (th * th + P)
                    m2 += wgt * om
                    m3 += wgt * om * om
                    m4 += wgt * om * th
                    k0 += wgt * k
                    k1 += wgt * k * th
                    k2 += wgt * k * (th * th + P)
                    eS += wgt * (st.lam / E - b * b / (E * E))
                    eg += wgt * (-2.0 * b * om / E)
                # chain rule through S = sw^2/V, g = tl/V, V = tl^2 + sw^2
                dSl = -2.0 * tau_l * sigma_omega * sigma_omega / (p.V * p.V)
                dSs = 2.0 * sigma_omega * tau_l * tau_l / (p.V * p.V)
                dgl = (sigma_omega * sigma_omega - tau_l * tau_l) / (p.V * p.V)
                dgs = -2.0 * tau_l * sigma_omega / (p.V * p.V)
                H = 0.5 * m3 / (p.V * p.V) - 0.5 / p.V
                gl = -0.5 * (eS * dSl + eg * dgl) + H * 2.0 * tau_l
                gs = -0.5 * (eS * dSs + eg * dgs) + H * 2.0 * sigma_omega
            else:
                if adapt:
                    x[0] = centers[j, 0]
                    x[1] = centers[j, 1]
                    mode2(x, &st, &p, Hm)
                    centers[j, 0] = x[0]
                    centers[j, 1] = x[1]
                    det = Hm[0] * Hm[2] - Hm[1] * Hm[1]
                    if Hm[0] > 0.0 and det > 0.0:
                        # inverse of the negative Hessian, then its Cholesky factor
                        i11 = Hm[2] / det
                        i21 = -Hm[1] / det
                        i22 = Hm[0] / det
                        centers[j, 2] = sqrt(i11)
                        centers[j, 3] = i21 / centers[j, 2]
                        centers[j, 4] = sqrt(i22 - centers[j, 3] * centers[j, 3])
                    else:
                        centers[j, 2] = 1.0
                        centers[j, 3] = 0.0
                        centers[j, 4] = 1.0
                L11 = centers[j, 2]
                L21 = centers[j, 3]
                L22 = centers[j, 4]
                mx = -1e300
                for a in range(n_q):
                    for bq in range(n_q):
                        u = centers[j, 0] + 1.4142135623730951 * L11 * gh_x[a]
                        v = centers[j, 1] + 1.4142135623730951 * (L21 * gh_x[a] + L22 * gh_x[bq])
                        lw = (gh_logw[a] + gh_logw[bq] + gh_x[a] * gh_x[a] + gh_x[bq] * gh_x[bq]
                              + h2(u, v, &st, &p, x, Hm))
                        lwbuf[a * n_q + bq] = lw
                        if lw > mx:
                            mx = lw
                tot = 0.0
                for a in range(n_q * n_q):
                    lwbuf[a] = exp(lwbuf[a] - mx)
                    tot += lwbuf[a]
                ll[j] = log(2.0 * L11 * L22) + mx + log(tot)
                for a in range(n_q):
                    for bq in range(n_q):
                        wgt = lwbuf[a * n_q + bq] / tot
                        u = centers[j, 0] + 1.4142135623730951 * L11 * gh_x[a]
                        v = centers[j, 1] + 1.4142135623730951 * (L21 * gh_x[a] + L22 * gh_x[bq])
                        om = tau_l * u + tau_q * u * u + sigma_omega * v
                        k = exp(-om)
                        dev = st.b0 - st.lam * u
                        C = st.W + dev * dev / st.lam
                        H = -0.5 * st.n + 0.5 * k * C
                        m0 += wgt * u
                        m1 += wgt * u * u
                        m2 += wgt * om
                        m3 += wgt * om * om
                        m4 += wgt * om * u
                        k0 += wgt * k
                        k1 += wgt * k * u
                        k2 += wgt * k * u * u
                        gl += wgt * u * H
                        gq += wgt * u * u * H
                        gs += wgt * v * H
            mom[j, 0] = m0
            mom[j, 1] = m1
            mom[j, 2] = m2
            mom[j, 3] = m3
            mom[j, 4] = m4
            mom[j, 5] = k0
            mom[j, 6] = k1
            mom[j, 7] = k2
            grand[j, 0] = gl
            grand[j, 1] = gq
            grand[j, 2] = gs
            if compute_grad:
                for i in range(start, stop):
                    r = r0[i]
                    s = sig[i]
                    invd = inv_d[i]
                    g_mu[i] = (k0 * r - k1 * s) * invd
                    g_ws[i] = 0.5 * ((k0 * r * r - 2.0 * k1 * r * s + k2 * s * s) * invd - 1.0)
                    g_bs[i] = 0.5 * s * (k1 * r - k2 * s) * invd


# ================================================================ several location effects
# Readable specification: melsml._quad_ref.group_loglik_multi_ref (same names, same steps).
from libc.stdlib cimport malloc, free


cdef inline int chol(double* a, int n) noexcept nogil:
    """In-place lower Cholesky factor of the row-major n x n matrix a; 0 if not PD."""
    cdef int i, j, k
    cdef double s
    for j in range(n):
        s = a[j * n + j]
        for k in range(j):
            s -= a[j * n + k] * a[j * n + k]
        if s <= 0.0:
            return 0
        a[j * n + j] = sqrt(s)
        for i in range(j + 1, n):
            s = a[i * n + j]
            for k in range(j):
                s -= a[i * n + k] * a[j * n + k]
            a[i * n + j] = s / a[j * n + j]
        for i in range(j):
            a[i * n + j] = 0.0
    return 1


cdef inline void chol_solve(const double* c, int n, double* b) noexcept nogil:
    """Solve (C C') x = b in place, C lower triangular."""
    cdef int i, k
    cdef double s
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= c[i * n + k] * b[k]
        b[i] = s / c[i * n + i]
    for i in range(n - 1, -1, -1):
        s = b[i]
        for k in range(i + 1, n):
            s -= c[k * n + i] * b[k]
        b[i] = s / c[i * n + i]


cdef struct MStats:
    int q
    double n
    double sumlogd
    double Asum
    double* lam      # q x q
    double* b0       # q
    # exact-location constants
    double V
    double* g        # q
    double* R        # q x q
    double* G        # R' lam R
    double* Rb0      # R' b0
    double* RLg      # R' lam g
    double* lamg     # lam g
    double gb0
    double gLg


cdef struct MWork:
    double* M        # q x q (Cholesky of I + k G)
    double* Mi       # q x q inverse
    double* Pt       # q x q
    double* b        # q
    double* h        # q
    double* m        # q
    double* y1       # q
    double* y2       # q
    double* tmp      # q x q


cdef double multi_node(double om, MStats* st, MWork* wk, double* d1) noexcept nogil:
    """log f(y | omega) (returned) and the posterior N(m, Pt) of u given omega.

    With d1 != NULL also d log f / d omega."""
    cdef int q = st.q
    cdef int i, j, r
    cdef double k = exp(-om)
    cdef double logdet = 0.0, c, hv = 0.0, s, bPb, yy, tr
    for i in range(q):
        wk.b[i] = st.b0[i] - om * st.lamg[i]
        wk.h[i] = st.Rb0[i] - om * st.RLg[i]
        for j in range(q):
            wk.M[i * q + j] = k * st.G[i * q + j] + (1.0 if i == j else 0.0)
    chol(wk.M, q)
    for i in range(q):
        logdet += 2.0 * log(wk.M[i * q + i])
        wk.y1[i] = wk.h[i]
    chol_solve(wk.M, q, wk.y1)
    for i in range(q):
        hv += wk.h[i] * wk.y1[i]
    c = st.Asum - 2.0 * om * st.gb0 + om * om * st.gLg
    # Mi = M^-1, Pt = R Mi R'
    for j in range(q):
        for i in range(q):
            wk.y2[i] = 1.0 if i == j else 0.0
        chol_solve(wk.M, q, wk.y2)
        for i in range(q):
            wk.Mi[i * q + j] = wk.y2[i]
    for i in range(q):
        for j in range(q):
            s = 0.0
            for r in range(q):
                s += wk.Mi[i * q + r] * st.R[j * q + r]
            wk.tmp[i * q + j] = s          # Mi R'
    for i in range(q):
        for j in range(q):
            s = 0.0
            for r in range(q):
                s += st.R[i * q + r] * wk.tmp[r * q + j]
            wk.Pt[i * q + j] = s
    for i in range(q):
        s = 0.0
        for j in range(q):
            s += wk.Pt[i * q + j] * wk.b[j]
        wk.y1[i] = s                         # Pt b
    for i in range(q):
        s = 0.0
        for j in range(q):
            s += st.lam[i * q + j] * wk.y1[j]
        wk.y2[i] = s                         # lam Pt b
        wk.m[i] = st.g[i] * om + k * wk.y1[i]
    if d1 != NULL:
        tr = 0.0
        bPb = 0.0
        yy = 0.0
        s = 0.0
        for i in range(q):
            for j in range(q):
                tr += wk.Pt[i * q + j] * st.lam[j * q + i]
            bPb += wk.b[i] * wk.y1[i]
            yy += wk.y1[i] * wk.y2[i]
            s += st.g[i] * (wk.b[i] - k * wk.y2[i])
        d1[0] = (-0.5 * (st.n - k * tr) + k * s
                 + 0.5 * (k * c - 2.0 * k * k * bPb + k * k * k * yy))
    return -0.5 * (st.n * LOG2PI + st.sumlogd + st.n * om + logdet + k * c - k * k * hv)


cdef inline double multi_h1(double om, MStats* st, MWork* wk, double* d1) noexcept nogil:
    cdef double v = multi_node(om, st, wk, d1)
    d1[0] -= om / st.V
    return v - 0.5 * om * om / st.V - 0.5 * log(2.0 * M_PI * st.V)


cdef double multi_mode1(double x, MStats* st, MWork* wk, double* curv) noexcept nogil:
    """Newton ascent on the omega integrand, curvature by differences of d1."""
    cdef double d1, d2, h, hn, dn, step, t, e, a, b
    cdef int it, ls
    h = multi_h1(x, st, wk, &d1)
    e = 1e-4 * (1.0 + fabs(x))
    multi_h1(x + e, st, wk, &a)
    multi_h1(x - e, st, wk, &b)
    d2 = (a - b) / (2.0 * e)
    for it in range(200):
        if d2 < 0.0:
            step = -d1 / d2
        else:
            step = 1.0 if d1 > 0.0 else -1.0
        if step > 5.0:
            step = 5.0
        elif step < -5.0:
            step = -5.0
        t = 1.0
        for ls in range(60):
            hn = multi_h1(x + t * step, st, wk, &dn)
            if hn >= h - 1e-13 * (1.0 + fabs(h)):
                break
            t *= 0.5
        x = x + t * step
        h = hn
        d1 = dn
        e = 1e-4 * (1.0 + fabs(x))
        multi_h1(x + e, st, wk, &a)
        multi_h1(x - e, st, wk, &b)
        d2 = (a - b) / (2.0 * e)
        if fabs(t * step) < 1e-11 * (1.0 + fabs(x)):
            break
    curv[0] = d2
    return x


cdef double multi_h_theta(const double* theta, MStats* st, const double* L, int d,
                          double* x, double* s, double* grad, double* H, double* tmp) noexcept nogil:
    """Log integrand over standardised theta; gradient and Hessian if grad != NULL."""
    cdef int q = d - 1
    cdef int i, j, r
    cdef double om, k, C, acc, tt = 0.0
    for i in range(d):
        acc = 0.0
        for j in range(i + 1):
            acc += L[i * d + j] * theta[j]
        x[i] = acc
        tt += theta[i] * theta[i]
    om = x[q]
    k = exp(-om)
    C = st.Asum
    for i in range(q):
        acc = 0.0
        for j in range(q):
            acc += st.lam[i * q + j] * x[j]
        C += -2.0 * x[i] * st.b0[i] + x[i] * acc
        s[i] = k * (st.b0[i] - acc)
    s[q] = -0.5 * st.n + 0.5 * k * C
    if grad != NULL:
        for i in range(d):
            acc = 0.0
            for r in range(i, d):
                acc += L[r * d + i] * s[r]
            grad[i] = acc - theta[i]
        # Hx (d x d) into tmp, then H = L' Hx L - I
        for i in range(q):
            for j in range(q):
                tmp[i * d + j] = -k * st.lam[i * q + j]
            tmp[i * d + q] = -s[i]
            tmp[q * d + i] = -s[i]
        tmp[q * d + q] = -0.5 * k * C
        for i in range(d):
            for j in range(d):
                acc = 0.0
                for r in range(d):
                    acc += tmp[i * d + r] * L[r * d + j]
                H[i * d + j] = acc      # Hx L (temporarily)
        for i in range(d):
            for j in range(d):
                acc = 0.0
                for r in range(d):
                    acc += L[r * d + i] * H[r * d + j]
                tmp[i * d + j] = acc
        for i in range(d * d):
            H[i] = tmp[i]
        for i in range(d):
            H[i * d + i] -= 1.0
    return (-0.5 * (st.n * LOG2PI + st.sumlogd + st.n * om + k * C) - 0.5 * tt
            - 0.5 * d * LOG2PI)


cdef inline double place_node(Py_ssize_t node, int n_q, int d, int* idx, const double* gh_x,
                              const double* gh_logw, const double* Lc, const double* mode,
                              double* th) noexcept nogil:
    """Node ``node`` of the d-dimensional product rule, placed at mode + sqrt(2) Lc x.

    Returns the node's log weight against exp(-|x|^2) plus |x|^2."""
    cdef Py_ssize_t r = node
    cdef int a, b
    cdef double lw = 0.0, acc
    for a in range(d - 1, -1, -1):
        idx[a] = <int>(r % n_q)
        r = r // n_q
        lw += gh_logw[idx[a]] + gh_x[idx[a]] * gh_x[idx[a]]
    for a in range(d):
        acc = 0.0
        for b in range(a + 1):
            acc += Lc[a * d + b] * gh_x[idx[b]]
        th[a] = mode[a] + 1.4142135623730951 * acc
    return lw


def group_loglik_multi(
    const double[::1] r0,
    const double[::1] eta_ws,
    const double[:, ::1] Z,
    const Py_ssize_t[::1] group_ptr,
    int mode,
    const double[:, ::1] L,
    const double[::1] gh_x,
    const double[::1] gh_logw,
    double[::1] ll,
    double[:, ::1] eu,
    double[:, :, ::1] euu,
    double[::1] eom,
    double[::1] eom2,
    double[:, ::1] euom,
    double[::1] k0,
    double[:, ::1] k1,
    double[:, :, ::1] k2,
    double[:, :, ::1] dL,
    double[:, ::1] centers,
    double[::1] g_mu,
    double[::1] g_ws,
    bint adapt=True,
    bint compute_grad=True,
):
    """Per-group likelihood with q random location effects and a random scale.

    ``L`` is the lower-triangular factor of cov(u, omega) ((q+1) x (q+1), omega
    last) or, in mode 0 (no random scale), of cov(u) (q x q).  Outputs per
    group: log-likelihood, posterior moments of u and omega, E kappa,
    E kappa u, E kappa u u', the gradient in L (lower triangle of ``dL``),
    the node placement ``centers`` ((q+1) mode entries, then the scale: the
    posterior SD of omega (mode 1) or the (q+1) x (q+1) Cholesky factor
    (mode 2)), and per unit the gradient in the mean and WS linear predictors.
    See melsml._quad_ref.group_loglik_multi_ref.
    """
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef int q = Z.shape[1]
    cdef int d = q + 1
    cdef int n_q = gh_x.shape[0]
    cdef Py_ssize_t j, i, node, n_nodes, start, stop
    cdef int a, b, r, ok
    cdef double invd, rr, acc, om, sd, curv, lw, mx, tot, wt, k, V, lwv, tl, zk1, quad
    cdef double xi_s, nu, aGa, Gga
    cdef MStats st
    cdef MWork wk
    cdef double lwd = 0.0
    if L.shape[0] != (d if mode != 0 else q) or L.shape[1] != L.shape[0]:
        raise ValueError("L has the wrong shape for this mode")
    n_nodes = 1
    for a in range(d if mode == 2 else 1):
        n_nodes *= n_q
    cdef double* buf = <double*> malloc(sizeof(double) * (40 * d * d + 20 * d + 2 * n_nodes))
    cdef int* idx = <int*> malloc(sizeof(int) * (d + 1))
    if buf == NULL or idx == NULL:
        free(buf)
        free(idx)
        raise MemoryError()
    cdef double* Lf
    cdef double* A
    cdef double* l
    cdef double* av
    cdef double* GS
    cdef double* Gg
    cdef double* xi
    cdef double* th
    cdef double* th2
    cdef double* xv
    cdef double* sv
    cdef double* gr
    cdef double* gr2
    cdef double* Hm
    cdef double* Hm2
    cdef double* T1
    cdef double* Lc
    cdef double* step
    cdef double* dLg
    cdef double* lwbuf
    cdef double h0, hn, t, nrm
    cdef int it, ls
    cdef double* p = buf
    st.q = q
    st.lam = p
    p += q * q
    st.b0 = p
    p += q
    st.g = p
    p += q
    st.R = p
    p += q * q
    st.G = p
    p += q * q
    st.Rb0 = p
    p += q
    st.RLg = p
    p += q
    st.lamg = p
    p += q
    wk.M = p
    p += q * q
    wk.Mi = p
    p += q * q
    wk.Pt = p
    p += q * q
    wk.b = p
    p += q
    wk.h = p
    p += q
    wk.m = p
    p += q
    wk.y1 = p
    p += q
    wk.y2 = p
    p += q
    wk.tmp = p
    p += q * q
    Lf = p
    p += d * d            # L as flat (q+1)^2 (zero-padded in mode 0)
    A = p
    p += q * q
    l = p
    p += q
    av = p
    p += q                # A l
    GS = p
    p += q * q
    Gg = p
    p += q
    xi = p
    p += q
    th = p
    p += d
    th2 = p
    p += d
    xv = p
    p += d
    sv = p
    p += d
    gr = p
    p += d
    gr2 = p
    p += d
    Hm = p
    p += d * d
    Hm2 = p
    p += d * d
    T1 = p
    p += d * d
    Lc = p
    p += d * d
    step = p
    p += d
    dLg = p
    p += d * d
    lwbuf = p
    p += n_nodes

    for a in range(d * d):
        Lf[a] = 0.0
    for a in range(L.shape[0]):
        for b in range(a + 1):
            Lf[a * d + b] = L[a, b]
    for a in range(q):
        for b in range(q):
            A[a * q + b] = Lf[a * d + b]
        l[a] = Lf[q * d + a] if mode != 0 else 0.0
    lwv = Lf[q * d + q] if mode != 0 else 0.0
    # exact-location constants (mode 1); mode 0 is the same with g = 0 and R = A
    V = 0.0
    for a in range(q):
        V += l[a] * l[a]
    tl = V
    V += lwv * lwv
    st.V = V
    for a in range(q):
        acc = 0.0
        for b in range(q):
            acc += A[a * q + b] * l[b]
        av[a] = acc
        st.g[a] = acc / V if mode == 1 else 0.0
    acc = (1.0 - fabs(lwv) / sqrt(V)) / tl if (mode == 1 and tl > 0.0) else 0.0
    for a in range(q):
        for b in range(q):
            rr = 0.0
            for r in range(q):
                rr += A[a * q + r] * ((1.0 if r == b else 0.0) - acc * l[r] * l[b])
            st.R[a * q + b] = rr

    try:
        with nogil:
            for j in range(n_groups):
                start = group_ptr[j]
                stop = group_ptr[j + 1]
                st.n = <double>(stop - start)
                st.sumlogd = 0.0
                st.Asum = 0.0
                for a in range(q * q):
                    st.lam[a] = 0.0
                for a in range(q):
                    st.b0[a] = 0.0
                for i in range(start, stop):
                    invd = exp(-eta_ws[i])
                    rr = r0[i]
                    st.sumlogd += eta_ws[i]
                    st.Asum += rr * rr * invd
                    for a in range(q):
                        st.b0[a] += Z[i, a] * rr * invd
                        for b in range(a + 1):
                            st.lam[a * q + b] += Z[i, a] * Z[i, b] * invd
                for a in range(q):
                    for b in range(a + 1, q):
                        st.lam[a * q + b] = st.lam[b * q + a]
                # R' lam R, R' b0, lam g, R' lam g, g'b0, g' lam g
                for a in range(q):
                    acc = 0.0
                    for b in range(q):
                        acc += st.lam[a * q + b] * st.g[b]
                    st.lamg[a] = acc
                st.gb0 = 0.0
                st.gLg = 0.0
                for a in range(q):
                    st.gb0 += st.g[a] * st.b0[a]
                    st.gLg += st.g[a] * st.lamg[a]
                    st.Rb0[a] = 0.0
                    st.RLg[a] = 0.0
                    for r in range(q):
                        st.Rb0[a] += st.R[r * q + a] * st.b0[r]
                        st.RLg[a] += st.R[r * q + a] * st.lamg[r]
                for a in range(q):
                    for b in range(q):
                        acc = 0.0
                        for r in range(q):
                            acc += st.lam[a * q + r] * st.R[r * q + b]
                        wk.tmp[a * q + b] = acc
                for a in range(q):
                    for b in range(q):
                        acc = 0.0
                        for r in range(q):
                            acc += st.R[r * q + a] * wk.tmp[r * q + b]
                        st.G[a * q + b] = acc

                for a in range(q):
                    eu[j, a] = 0.0
                    euom[j, a] = 0.0
                    k1[j, a] = 0.0
                    GS[a] = 0.0
                    Gg[a] = 0.0
                    for b in range(q):
                        euu[j, a, b] = 0.0
                        k2[j, a, b] = 0.0
                        GS[a * q + b] = 0.0
                for a in range(d * d):
                    dLg[a] = 0.0
                eom[j] = 0.0
                eom2[j] = 0.0
                k0[j] = 0.0

                if mode == 0 or mode == 1:
                    if mode == 0:
                        n_nodes = 1
                        lwbuf[0] = 1.0
                        tot = 1.0
                        ll[j] = multi_node(0.0, &st, &wk, NULL)
                        sd = 0.0
                        for a in range(d):
                            centers[j, a] = 0.0
                    else:
                        n_nodes = n_q
                        if adapt:
                            om = multi_mode1(centers[j, 0], &st, &wk, &curv)
                            centers[j, 0] = om
                            centers[j, d] = 1.0 / sqrt(-curv) if curv < 0.0 else sqrt(V)
                        sd = centers[j, d]
                        mx = -1e300
                        for node in range(n_q):
                            om = centers[j, 0] + 1.4142135623730951 * sd * gh_x[node]
                            lw = gh_logw[node] + gh_x[node] * gh_x[node] + multi_h1(om, &st, &wk, &curv)
                            lwbuf[node] = lw
                            if lw > mx:
                                mx = lw
                        tot = 0.0
                        for node in range(n_q):
                            lwbuf[node] = exp(lwbuf[node] - mx)
                            tot += lwbuf[node]
                        ll[j] = log(1.4142135623730951 * sd) + mx + log(tot)
                    for node in range(n_nodes):
                        wt = lwbuf[node] / tot
                        om = 0.0 if mode == 0 else centers[j, 0] + 1.4142135623730951 * sd * gh_x[node]
                        multi_node(om, &st, &wk, NULL)
                        k = exp(-om)
                        eom[j] += wt * om
                        eom2[j] += wt * om * om
                        k0[j] += wt * k
                        for a in range(q):
                            eu[j, a] += wt * wk.m[a]
                            euom[j, a] += wt * om * wk.m[a]
                            k1[j, a] += wt * k * wk.m[a]
                            for b in range(q):
                                rr = wk.Pt[a * q + b] + wk.m[a] * wk.m[b]
                                euu[j, a, b] += wt * rr
                                k2[j, a, b] += wt * k * rr
                            # w = k (b - k lam Pt b) = k (b - k y2)
                            xv[a] = k * (wk.b[a] - k * wk.y2[a])
                        for a in range(q):
                            Gg[a] += wt * xv[a] * om
                        # GS += wt * 0.5 (w w' - (k lam - k^2 lam Pt lam))
                        for a in range(q):
                            for b in range(q):
                                acc = 0.0
                                for r in range(q):
                                    acc += wk.Pt[a * q + r] * st.lam[r * q + b]
                                wk.tmp[a * q + b] = acc          # Pt lam
                        for a in range(q):
                            for b in range(q):
                                acc = 0.0
                                for r in range(q):
                                    acc += st.lam[a * q + r] * wk.tmp[r * q + b]
                                GS[a * q + b] += wt * 0.5 * (
                                    xv[a] * xv[b] - (k * st.lam[a * q + b] - k * k * acc))
                    # chain rule to L
                    if mode == 0:
                        for a in range(q):
                            for b in range(q):
                                acc = 0.0
                                for r in range(q):
                                    acc += GS[a * q + r] * A[r * q + b]
                                dLg[a * d + b] = 2.0 * acc
                    else:
                        aGa = 0.0
                        Gga = 0.0
                        for a in range(q):
                            acc = 0.0
                            for b in range(q):
                                acc += GS[a * q + b] * av[b]
                            xi[a] = (-2.0 * acc + Gg[a]) / V
                            aGa += av[a] * acc
                            Gga += Gg[a] * av[a]
                        nu = (aGa - Gga) / (V * V) + eom2[j] / (2.0 * V * V) - 1.0 / (2.0 * V)
                        for a in range(q):
                            for b in range(q):
                                acc = 0.0
                                for r in range(q):
                                    acc += GS[a * q + r] * A[r * q + b]
                                dLg[a * d + b] = 2.0 * acc + xi[a] * l[b]
                            acc = 0.0
                            for r in range(q):
                                acc += A[r * q + a] * xi[r]
                            dLg[q * d + a] = acc + 2.0 * nu * l[a]
                        dLg[q * d + q] = 2.0 * nu * lwv
                else:
                    # ---- general (q+1)-D adaptive quadrature over theta
                    if adapt:
                        for a in range(d):
                            th[a] = centers[j, a]
                        h0 = multi_h_theta(th, &st, Lf, d, xv, sv, gr, Hm, T1)
                        for it in range(200):
                            for a in range(d * d):
                                Hm2[a] = -Hm[a]
                            ok = chol(Hm2, d)
                            if ok:
                                for a in range(d):
                                    step[a] = gr[a]
                                chol_solve(Hm2, d, step)
                            else:
                                nrm = 0.0
                                for a in range(d):
                                    nrm += gr[a] * gr[a]
                                nrm = sqrt(nrm)
                                for a in range(d):
                                    step[a] = gr[a] / (1.0 + nrm)
                            nrm = 0.0
                            for a in range(d):
                                nrm += step[a] * step[a]
                            nrm = sqrt(nrm)
                            if nrm > 5.0:
                                for a in range(d):
                                    step[a] *= 5.0 / nrm
                                nrm = 5.0
                            t = 1.0
                            for ls in range(60):
                                for a in range(d):
                                    th2[a] = th[a] + t * step[a]
                                hn = multi_h_theta(th2, &st, Lf, d, xv, sv, gr2, Hm2, T1)
                                if hn >= h0 - 1e-13 * (1.0 + fabs(h0)):
                                    break
                                t *= 0.5
                            acc = 0.0
                            for a in range(d):
                                th[a] = th2[a]
                                gr[a] = gr2[a]
                                acc += fabs(th[a])
                            for a in range(d * d):
                                Hm[a] = Hm2[a]
                            h0 = hn
                            if t * nrm < 1e-11 * (1.0 + acc):
                                break
                        for a in range(d):
                            centers[j, a] = th[a]
                        # Cholesky factor of the inverse of -Hessian
                        for a in range(d * d):
                            Hm2[a] = -Hm[a]
                        ok = chol(Hm2, d)
                        if ok:
                            for b in range(d):
                                for a in range(d):
                                    step[a] = 1.0 if a == b else 0.0
                                chol_solve(Hm2, d, step)
                                for a in range(d):
                                    T1[a * d + b] = step[a]
                            ok = chol(T1, d)
                        for a in range(d):
                            for b in range(d):
                                centers[j, d + a * d + b] = (T1[a * d + b] if ok
                                                             else (1.0 if a == b else 0.0))
                    for a in range(d * d):
                        Lc[a] = centers[j, d + a]
                    lwd = 0.5 * d * log(2.0)
                    for a in range(d):
                        lwd += log(Lc[a * d + a])
                    n_nodes = 1
                    for a in range(d):
                        n_nodes *= n_q
                    mx = -1e300
                    for node in range(n_nodes):
                        lw = place_node(node, n_q, d, idx, &gh_x[0], &gh_logw[0], Lc,
                                        &centers[j, 0], th)
                        lw += multi_h_theta(th, &st, Lf, d, xv, sv, NULL, NULL, NULL)
                        lwbuf[node] = lw
                        if lw > mx:
                            mx = lw
                    tot = 0.0
                    for node in range(n_nodes):
                        lwbuf[node] = exp(lwbuf[node] - mx)
                        tot += lwbuf[node]
                    ll[j] = lwd + mx + log(tot)
                    for node in range(n_nodes):
                        wt = lwbuf[node] / tot
                        place_node(node, n_q, d, idx, &gh_x[0], &gh_logw[0], Lc, &centers[j, 0],
                                   th)
                        multi_h_theta(th, &st, Lf, d, xv, sv, NULL, NULL, NULL)
                        om = xv[q]
                        k = exp(-om)
                        eom[j] += wt * om
                        eom2[j] += wt * om * om
                        k0[j] += wt * k
                        for a in range(q):
                            eu[j, a] += wt * xv[a]
                            euom[j, a] += wt * om * xv[a]
                            k1[j, a] += wt * k * xv[a]
                            for b in range(q):
                                euu[j, a, b] += wt * xv[a] * xv[b]
                                k2[j, a, b] += wt * k * xv[a] * xv[b]
                        for a in range(d):
                            for b in range(a + 1):
                                dLg[a * d + b] += wt * sv[a] * th[b]
                for a in range(d):
                    for b in range(d):
                        dL[j, a, b] = dLg[a * d + b] if b <= a else 0.0
                if compute_grad:
                    for i in range(start, stop):
                        invd = exp(-eta_ws[i])
                        rr = r0[i]
                        zk1 = 0.0
                        quad = 0.0
                        for a in range(q):
                            zk1 += Z[i, a] * k1[j, a]
                            for b in range(q):
                                quad += Z[i, a] * k2[j, a, b] * Z[i, b]
                        g_mu[i] = (k0[j] * rr - zk1) * invd
                        g_ws[i] = 0.5 * ((k0[j] * rr * rr - 2.0 * rr * zk1 + quad) * invd - 1.0)
    finally:
        free(buf)
        free(idx)


# ================================================================ the general engine
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
    double* invd
    # gradient accumulation in the full pass (unit-level groups)
    int acc_grad
    double lw_off         # log weight of the node less log p(y | xi), less the reference
    double wt
    double* gmu
    double* gws
    double* gz


cdef void eng_group(Eng* e, Py_ssize_t start, Py_ssize_t stop, int const_h,
                    const double* r0, const double* eta, const double* Z,
                    const double* H) noexcept nogil:
    """Make group [start, stop) current: one pass over its units for the
    per-group sums (and exp(-eta_i), kept for the node loops)."""
    cdef int q = e.q, s = e.s
    cdef int a, b
    cdef Py_ssize_t i
    cdef double ai
    e.start = start
    e.stop = stop
    e.n = <double>(stop - start)
    e.const_h = const_h
    e.acc_grad = 0
    e.sumeta = 0.0
    e.A = 0.0
    for a in range(q * q):
        e.lam0[a] = 0.0
    for a in range(q):
        e.b0[a] = 0.0
    for a in range(s):
        e.h[a] = H[start * s + a]
    for i in range(start, stop):
        e.sumeta += eta[i]
        e.invd[i] = exp(-eta[i])
        if const_h:
            ai = e.invd[i]
            e.A += ai * r0[i] * r0[i]
            for a in range(q):
                e.b0[a] += ai * Z[i * q + a] * r0[i]
                for b in range(a + 1):
                    e.lam0[a * q + b] += ai * Z[i * q + a] * Z[i * q + b]
    for a in range(q):
        for b in range(a + 1, q):
            e.lam0[a * q + b] = e.lam0[b * q + a]


cdef void eng_node(Eng* e, const double* xi, const double* r0, const double* eta,
                   const double* Z, const double* H, bint full) noexcept nogil:
    """log p(y | xi) of the current group and, with ``full``, the posterior terms."""
    cdef int q = e.q, s = e.s, d = e.d
    cdef int a, b, k, l
    cdef Py_ssize_t i
    cdef double acc, hv, sumhv, ai, ri, kap, eh, qd, rho, trPL, trPLPL, mLm
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
        sumhv = 0.0
        e.c = 0.0
        for a in range(q):
            e.b[a] = 0.0
            for b in range(q):
                e.lam[a * q + b] = 0.0
        for i in range(e.start, e.stop):
            hv = 0.0
            for a in range(s):
                hv += H[i * s + a] * e.v[a]
            sumhv += hv
            ai = e.invd[i] * exp(-hv)
            ri = r0[i]
            for a in range(q):
                ri -= Z[i * q + a] * e.gx[a]
            e.aw[i] = ai
            e.rw[i] = ri
            e.c += ai * ri * ri
            for a in range(q):
                e.b[a] += ai * Z[i * q + a] * ri
                for b in range(a + 1):
                    e.lam[a * q + b] += ai * Z[i * q + a] * Z[i * q + b]
        for a in range(q):
            for b in range(a + 1, q):
                e.lam[a * q + b] = e.lam[b * q + a]
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
                e.gmu[i] += e.wt * ai * eh
                e.gws[i] += e.wt * rho
                for a in range(q):
                    e.gz[i * q + a] += e.wt * ai * (eh * e.mu[a] - e.zt[a])
            for k in range(s):
                e.sv[k] -= 0.5 * H[i * s + k] * (1.0 - rho)
                for l in range(s):
                    e.R[k * s + l] += rho * H[i * s + k] * H[i * s + l]
                for a in range(q):
                    e.N[a * s + k] += ai * eh * Z[i * q + a] * H[i * s + k]
                    for b in range(q):
                        e.M[(k * q + a) * q + b] += ai * H[i * s + k] * Z[i * q + a] * Z[i * q + b]
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
        sumhv = 0.0
        ss = 0.0
        for i in range(e.start, e.stop):
            hv = 0.0
            for a in range(s):
                hv += H[i * s + a] * e.v[a]
            sumhv += hv
            ai = e.invd[i] * exp(-hv)
            ei = r0[i]
            for a in range(q):
                ei -= Z[i * q + a] * e.mu[a]
            e.aw[i] = ai
            e.rw[i] = ei
            ss += ai * ei * ei
        e.logp = -0.5 * (e.n * LOG2PI + e.sumeta + sumhv + ss)
        if not full:
            return
        if e.acc_grad:
            e.wt = exp(e.logp + e.lw_off)
        for a in range(d):
            e.sx[a] = 0.0
            for b in range(d):
                e.Hx[a * d + b] = 0.0
        for i in range(e.start, e.stop):
            ai = e.aw[i]
            ei = e.rw[i]
            for a in range(q):
                e.sx[a] += ai * ei * Z[i * q + a]
                for b in range(a + 1):
                    e.Hx[a * d + b] -= ai * Z[i * q + a] * Z[i * q + b]
                for k in range(s):
                    e.Hx[(q + k) * d + a] -= ai * ei * Z[i * q + a] * H[i * s + k]
            for a in range(s):
                e.sx[q + a] -= 0.5 * H[i * s + a] * (1.0 - ai * ei * ei)
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
    """
    cdef int q = Z.shape[1], s = H.shape[1]
    cdef int d = q + s
    cdef int m = d if full else s
    cdef int n_q = gh_x.shape[0]
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef Py_ssize_t j, i, node, n_nodes = 1
    cdef int a, b, k, it, ls, ok
    cdef double acc, mx, tot, wt, val, valn, nrm, t, lwd, ai, eh, qd, kap, gtq
    cdef Eng e
    cdef Eng* ep = &e
    cdef double *xi, *xi2, *grad, *grad2, *step, *hess, *hess2, *Lc, *T1, *sbar, *k1, *ztmp, *k2, *omacc, *lwbuf
    cdef double *buf, *p
    cdef double[::1] uw
    cdef int* idx
    cdef const double *pr0, *peta, *pZ, *pH
    if (Kvv.shape[0] != s or Kuv.shape[0] != q or Kuv.shape[1] != s or C.shape[0] != q
            or L.shape[0] != d or L.shape[1] != d):
        raise ValueError("engine_loglik: factor shapes do not match Z and H")
    if centers.shape[1] != m + m * m:
        raise ValueError("engine_loglik: centers must have m + m*m columns")
    for a in range(m):
        n_nodes *= n_q
    e.q = q
    e.s = s
    e.d = d
    e.Kvv = &Kvv[0, 0] if s > 0 else NULL
    e.Kuv = &Kuv[0, 0] if s > 0 else NULL
    e.C = &C[0, 0]
    e.Lf = &L[0, 0]
    e.tau_q = tau_q
    e.full = full
    cdef Py_ssize_t n_buf
    n_buf = (10 * q * q + 8 * q + 4 * s + 2 * q * s + 2 * s * q * q
                             + 3 * s * s + 2 * d * d + 6 * s + 4 * s * s + d
                             + 3 * q + q * q + n_nodes + 8
                             + 8 * d + 8 * d * d)
    buf = <double*> malloc(n_buf * sizeof(double))
    p = buf
    if buf == NULL:
        raise MemoryError()
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
    xi = p; p += d
    xi2 = p; p += d
    grad = p; p += d
    grad2 = p; p += d
    step = p; p += d
    hess = p; p += d * d
    hess2 = p; p += d * d
    Lc = p; p += d * d
    T1 = p; p += d * d
    sbar = p; p += d
    k1 = p; p += q
    ztmp = p; p += q
    k2 = p; p += q * q
    omacc = p; p += d * d
    lwbuf = p; p += n_nodes
    idx = <int*> malloc((d + 1) * sizeof(int))
    pr0 = &r0[0]
    peta = &eta[0]
    pZ = &Z[0, 0]
    pH = &H[0, 0] if s > 0 else NULL
    unit_buf = np.empty(3 * r0.shape[0] + 1, dtype=np.float64)
    uw = unit_buf
    e.aw = &uw[0]
    e.rw = &uw[r0.shape[0]]
    e.invd = &uw[2 * r0.shape[0]]
    e.gmu = &g_mu[0]
    e.gws = &g_ws[0]
    e.gz = &g_z[0, 0]
    try:
        with nogil:
            for j in range(n_groups):
                eng_group(ep, group_ptr[j], group_ptr[j + 1], h_const[j] if s > 0 else 1,
                          pr0, peta, pZ, pH)

                # ---- node placement: mode of the log integrand (over xi, or theta if full)
                if m > 0 and adapt:
                    for a in range(m):
                        xi[a] = centers[j, a]
                    val = eng_psi(ep, xi, pr0, peta, pZ, pH, grad, hess, sbar)
                    for it in range(200):
                        for a in range(m * m):
                            hess2[a] = -hess[a]
                        ok = chol(hess2, m)
                        for a in range(m):
                            step[a] = grad[a]
                        if ok:
                            chol_solve(hess2, m, step)
                        else:
                            nrm = 0.0
                            for a in range(m):
                                nrm += grad[a] * grad[a]
                            nrm = sqrt(nrm)
                            for a in range(m):
                                step[a] = grad[a] / (1.0 + nrm)
                        nrm = 0.0
                        for a in range(m):
                            nrm += step[a] * step[a]
                        nrm = sqrt(nrm)
                        if nrm > 5.0:
                            for a in range(m):
                                step[a] *= 5.0 / nrm
                            nrm = 5.0
                        t = 1.0
                        for ls in range(60):
                            for a in range(m):
                                xi2[a] = xi[a] + t * step[a]
                            valn = eng_psi(ep, xi2, pr0, peta, pZ, pH, grad2, hess2, sbar)
                            if valn >= val - 1e-13 * (1.0 + fabs(val)):
                                break
                            t *= 0.5
                        acc = 0.0
                        for a in range(m):
                            xi[a] = xi2[a]
                            grad[a] = grad2[a]
                            acc += fabs(xi[a])
                        for a in range(m * m):
                            hess[a] = hess2[a]
                        val = valn
                        if t * nrm < 1e-11 * (1.0 + acc):
                            break
                    for a in range(m):
                        centers[j, a] = xi[a]
                    # Cholesky factor of the inverse of -hess
                    for a in range(m * m):
                        hess2[a] = -hess[a]
                    ok = chol(hess2, m)
                    if ok:
                        for b in range(m):
                            for a in range(m):
                                step[a] = 1.0 if a == b else 0.0
                            chol_solve(hess2, m, step)
                            for a in range(m):
                                T1[a * m + b] = step[a]
                        ok = chol(T1, m)
                    for a in range(m):
                        for b in range(m):
                            centers[j, m + a * m + b] = (T1[a * m + b] if ok
                                                         else (1.0 if a == b else 0.0))
                for a in range(m * m):
                    Lc[a] = centers[j, m + a]
                lwd = 0.5 * m * log(2.0)
                for a in range(m):
                    lwd += log(Lc[a * m + a])

                # ---- reference log weight: the mode's value, or the largest node's
                if m > 0 and adapt:
                    mx = val
                else:
                    mx = -1e300
                    for node in range(n_nodes):
                        acc = place_node(node, n_q, m, idx, &gh_x[0], &gh_logw[0], Lc,
                                         &centers[j, 0], xi) if m > 0 else 0.0
                        acc += eng_psi(ep, xi, pr0, peta, pZ, pH, NULL, NULL, NULL)
                        if acc > mx:
                            mx = acc

                # ---- one pass over the nodes: likelihood, posterior moments, Price
                # matrix and (unit-level groups) unit gradients, weights unnormalised
                for a in range(d):
                    ex[j, a] = 0.0
                    for b in range(d):
                        exx[j, a, b] = 0.0
                        omacc[a * d + b] = 0.0
                kap = 0.0
                for a in range(q):
                    k1[a] = 0.0
                    for b in range(q):
                        k2[a * q + b] = 0.0
                e.acc_grad = compute_grad and not e.const_h
                if e.acc_grad:
                    for i in range(e.start, e.stop):
                        g_mu[i] = 0.0
                        g_ws[i] = 0.0
                        for a in range(q):
                            g_z[i, a] = 0.0
                tot = 0.0
                gtq = 0.0
                for node in range(n_nodes):
                    acc = place_node(node, n_q, m, idx, &gh_x[0], &gh_logw[0], Lc,
                                     &centers[j, 0], xi) if m > 0 else 0.0
                    # the node's weight is known once log p(y | xi) is: the node
                    # function computes it before its unit loop accumulates gradients
                    acc -= 0.5 * m * LOG2PI + mx
                    for a in range(m):
                        acc -= 0.5 * xi[a] * xi[a]
                    e.lw_off = acc
                    if full:
                        eng_full_node(ep, xi, pr0, peta, pZ, pH, True)
                        if s > 0:
                            gtq += exp(e.logp + acc) * e.sx[q] * xi[0] * xi[0]
                    else:
                        eng_node(ep, xi, pr0, peta, pZ, pH, True)
                    wt = exp(e.logp + acc)
                    tot += wt
                    for a in range(d * d):
                        omacc[a] += wt * e.om[a]
                    for a in range(q):
                        ex[j, a] += wt * e.mu[a]
                        for b in range(q):
                            exx[j, a, b] += wt * (e.mu[a] * e.mu[b] + e.pinv[a * q + b])
                        for b in range(s):
                            exx[j, a, q + b] += wt * e.mu[a] * e.v[b]
                            exx[j, q + b, a] += wt * e.mu[a] * e.v[b]
                    for a in range(s):
                        ex[j, q + a] += wt * e.v[a]
                        for b in range(s):
                            exx[j, q + a, q + b] += wt * e.v[a] * e.v[b]
                    if compute_grad and e.const_h:
                        acc = 0.0
                        for a in range(s):
                            acc += e.h[a] * e.v[a]
                        acc = wt * exp(-acc)
                        kap += acc
                        for a in range(q):
                            k1[a] += acc * e.mu[a]
                            for b in range(q):
                                k2[a * q + b] += acc * (e.mu[a] * e.mu[b] + e.pinv[a * q + b])
                ll[j] = lwd + mx + log(tot)
                for a in range(d):
                    ex[j, a] /= tot
                    for b in range(d):
                        exx[j, a, b] /= tot
                        omacc[a * d + b] /= tot
                kap /= tot
                for a in range(q):
                    k1[a] /= tot
                    for b in range(q):
                        k2[a * q + b] /= tot
                dtq[j] = gtq / tot
                for a in range(d):
                    for b in range(d):
                        if b > a:
                            dL[j, a, b] = 0.0
                        elif full:
                            dL[j, a, b] = omacc[a * d + b]
                        else:
                            acc = 0.0
                            for k in range(d):
                                acc += omacc[a * d + k] * L[k, b]
                            dL[j, a, b] = acc
                if not compute_grad:
                    continue
                if e.const_h:
                    for i in range(e.start, e.stop):
                        ai = e.invd[i]
                        eh = kap * pr0[i]
                        qd = kap * pr0[i] * pr0[i]
                        for a in range(q):
                            eh -= pZ[i * q + a] * k1[a]
                            qd -= 2.0 * pr0[i] * pZ[i * q + a] * k1[a]
                            acc = 0.0
                            for b in range(q):
                                acc += k2[a * q + b] * pZ[i * q + b]
                            qd += pZ[i * q + a] * acc
                            g_z[i, a] = ai * (pr0[i] * k1[a] - acc)
                        g_mu[i] = ai * eh
                        g_ws[i] = 0.5 * (ai * qd - 1.0)
                else:
                    for i in range(e.start, e.stop):
                        g_mu[i] /= tot
                        g_ws[i] = 0.5 * (g_ws[i] / tot - 1.0)
                        for a in range(q):
                            g_z[i, a] /= tot
    finally:
        free(buf)
        free(idx)



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
):
    """The exact-location integrand at given points: for empirical Bayes grids.

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
    cdef int d = q + s
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef Py_ssize_t n_pts = points.shape[1]
    cdef Py_ssize_t j, k
    cdef int a, b
    cdef Eng e
    cdef Eng* ep = &e
    cdef double[::1] work
    cdef double* p
    cdef const double *pH
    if points.shape[0] != n_groups or points.shape[2] != s:
        raise ValueError("engine_points: points must have shape (n_groups, P, s)")
    work = np.zeros(12 * q * q + 10 * q + 6 * s + 2 * q * s + 2 * s * q * q + 3 * s * s
                    + 3 * d * d + 3 * d + 3 * r0.shape[0] + 8)
    p = &work[0]
    e.q = q
    e.s = s
    e.d = d
    e.full = 0
    e.Kvv = &Kvv[0, 0] if s > 0 else NULL
    e.Kuv = &Kuv[0, 0] if s > 0 else NULL
    e.C = &C[0, 0]
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
    e.aw = p; p += r0.shape[0]
    e.rw = p; p += r0.shape[0]
    e.invd = p; p += r0.shape[0]
    pH = &H[0, 0] if s > 0 else NULL
    with nogil:
        for j in range(n_groups):
            eng_group(ep, group_ptr[j], group_ptr[j + 1], h_const[j] if s > 0 else 1,
                      &r0[0], &eta[0], &Z[0, 0], pH)
            for k in range(n_pts):
                logpsi[j, k] = eng_psi(ep, &points[j, k, 0] if s > 0 else NULL, &r0[0],
                                       &eta[0], &Z[0, 0], pH, NULL, NULL, NULL)
                for a in range(q):
                    mu[j, k, a] = e.mu[a]
                    for b in range(q):
                        pinv[j, k, a, b] = e.pinv[a * q + b]
                for a in range(s):
                    v[j, k, a] = e.v[a]
