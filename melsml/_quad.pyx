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
