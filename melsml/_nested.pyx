# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled kernel of the three-level model: nested adaptive quadrature.

Students i in schools j in districts k::

    y = x'beta + u3_k + z_i c_k theta1_jk + e,   z_i = exp(s_i'alpha / 2),  c_k = exp(a3_k / 2)
    log var(e) = w'tau + v3_k + v2_jk,           v2_jk = tau_l theta1 + sigma_omega theta2
    b3_k = (u3, v3, a3)_k = M theta3_k,          theta1, theta2, theta3 standard normal

Schools are independent given their district's effects b3.  The district
effects are integrated by adaptive Gauss-Hermite quadrature (outside); each
school by the fast path (inside): its location effect exactly, given the
standardised scale effect xi = v2 / sqrt(tau_l^2 + sigma_omega^2), by 1-D
adaptive quadrature.  The rotation (xi, eta) of (theta1, theta2) makes the
location effect given xi a normal eta.  Everything a school needs is in eight
sums over its students (``stats``: n, sum log d, sum z^2/d, sum z/d, sum 1/d,
sum z r0/d, sum r0/d, sum r0^2/d with d = exp(w'tau), r0 = y - x'beta), so a
(district node, school node) pair costs O(1).

The score comes from Fisher's identity (the posterior expectation of the
complete-data score), and the Hessian in b3 used to place the outer nodes
from Louis' identity.  Readable specification and oracle: the brute-force
nested integral of ``tests/reference/nested_ref.py``.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport exp, log, sqrt, fabs, M_PI
from libc.stdlib cimport malloc, free

from melsml._dense cimport chol, chol_solve, place_node

cdef double LOG2PI = log(2.0 * M_PI)
cdef double SQRT2 = 1.4142135623730951

cdef enum:
    N_STATS = 8    # a school's sums
    N_UM = 6       # unit moments: E K, u3 E K, u3^2 E K, E K t, E K t^2, u3 E K t (t = c theta1)
    N_EB = 10      # EB moments of the school, see nested_loglik


cdef struct School:
    # the school's sums
    double n, sld, lam, sz, s1, bz, b1, a
    # given b3
    double u3, v3, c, c2, t0, q0
    # the school level
    double sv, cphi, sphi


cdef struct Inner:
    double ll
    double D[3]      # E of the complete-data score in (u3, v3, a3)
    double DD[9]     # E of its outer product (3 x 3)
    double H[9]      # E of the complete-data Hessian in b3 (3 x 3)
    double gtl, gso  # E of the score in tau_l and sigma_omega
    double k0, k1, k2            # E K, E K t, E K t^2
    double e[6]                  # E t, E t^2, E v2, E v2^2, E t v2, E exp(v2)


cdef inline void school_given_b3(School* p, const double* st, double u3, double v3,
                                 double a3) noexcept nogil:
    p.n = st[0]; p.sld = st[1]; p.lam = st[2]; p.sz = st[3]
    p.s1 = st[4]; p.bz = st[5]; p.b1 = st[6]; p.a = st[7]
    p.u3 = u3
    p.v3 = v3
    p.c = exp(0.5 * a3)
    p.c2 = p.c * p.c
    p.t0 = p.bz - u3 * p.sz
    p.q0 = p.a - 2.0 * u3 * p.b1 + u3 * u3 * p.s1


cdef inline double inner_g(const School* p, double xi, double* dg, double* d2g) noexcept nogil:
    """log of f(y_j | b3, xi) phi(xi), with the location integrated; its first and
    second derivatives in xi go to dg and d2g (when not NULL)."""
    cdef double arg = -p.v3 - p.sv * xi
    if arg > 700.0:
        arg = 700.0
    cdef double K = exp(arg)
    cdef double cc = p.c * p.cphi
    cdef double tr = p.t0 - cc * p.lam * xi
    cdef double rr = p.q0 - 2.0 * cc * xi * p.t0 + cc * cc * xi * xi * p.lam
    cdef double aa = p.c2 * p.sphi * p.sphi
    cdef double P = 1.0 + aa * K * p.lam
    cdef double g = (-0.5 * (p.n * LOG2PI + p.sld + p.n * (p.v3 + p.sv * xi))
                     - 0.5 * K * rr + 0.5 * aa * K * K * tr * tr / P - 0.5 * log(P)
                     - 0.5 * xi * xi - 0.5 * LOG2PI)
    cdef double k1, k2, t1, r1, r2, nn, n1, n2, p1, p2
    if dg != NULL:
        # derivatives of K, tr, rr, N = K^2 tr^2 and P in xi
        k1 = -p.sv * K
        k2 = p.sv * p.sv * K
        t1 = -cc * p.lam
        r1 = -2.0 * cc * tr
        r2 = 2.0 * cc * cc * p.lam
        nn = K * K * tr * tr
        n1 = 2.0 * K * k1 * tr * tr + 2.0 * K * K * tr * t1
        p1 = aa * p.lam * k1
        dg[0] = (-0.5 * p.n * p.sv - 0.5 * (k1 * rr + K * r1)
                 + 0.5 * aa * (n1 * P - nn * p1) / (P * P) - 0.5 * p1 / P - xi)
        if d2g != NULL:
            n2 = (2.0 * (k1 * k1 + K * k2) * tr * tr + 8.0 * K * k1 * tr * t1
                  + 2.0 * K * K * t1 * t1)
            p2 = aa * p.lam * k2
            d2g[0] = (-0.5 * (k2 * rr + 2.0 * k1 * r1 + K * r2)
                      + 0.5 * aa * ((n2 * P - nn * p2) / (P * P)
                                    - 2.0 * p1 * (n1 * P - nn * p1) / (P * P * P))
                      - 0.5 * (p2 / P - p1 * p1 / (P * P)) - 1.0)
    return g


cdef double inner_mode(const School* p, double xi0, double* curv) noexcept nogil:
    """Mode of inner_g by safeguarded Newton; curv: minus its second derivative there."""
    cdef double xi = xi0, g, d1, d2, step, t, gn, dn, d2n
    cdef int it, k
    g = inner_g(p, xi, &d1, &d2)
    for it in range(100):
        step = -d1 / d2 if d2 < -1e-12 else d1
        if step > 2.0:
            step = 2.0
        elif step < -2.0:
            step = -2.0
        t = 1.0
        for k in range(40):
            gn = inner_g(p, xi + t * step, &dn, &d2n)
            if gn >= g - 1e-13 * fabs(g):
                break
            t *= 0.5
        xi += t * step
        g = gn
        d1 = dn
        d2 = d2n
        if fabs(t * step) < 1e-9:
            break
    curv[0] = -d2 if d2 < -1e-12 else 1.0
    return xi


cdef inline double poly_e(double c0, double c1, double c2, const double* E) noexcept nogil:
    return c0 + c1 * E[1] + c2 * E[2]


cdef inline double poly_ee(const double* p, const double* q, const double* E) noexcept nogil:
    cdef double s = 0.0
    cdef int i, j
    for i in range(3):
        for j in range(3):
            s += p[i] * q[j] * E[i + j]
    return s


cdef void inner_school(School* p, double* mode, int n_q, const double* gx,
                       const double* glw, double* lwork, Inner* out, int want) noexcept nogil:
    """The school's log-likelihood given b3 and the posterior moments (see Inner):
    ``want`` 0: none; 1: D, DD and H (for the outer mode search); 2: D and the
    rest (for the score and the EB moments).

    ``mode`` is the warm start of the mode search and receives the mode."""
    cdef int m, nq, i, j
    cdef double sd, curv, xi, lw, mx, tot, w, K, tr, P, mue, sde, m1, s1, m2, s2
    cdef double E[5]
    cdef double Du[3]
    cdef double Dv[3]
    cdef double Da[3]
    cdef double* Dp[3]
    cdef double ED[3]
    cdef double e12, e112, dd
    Dp[0] = Du; Dp[1] = Dv; Dp[2] = Da
    if p.sv > 0.0:
        mode[0] = inner_mode(p, mode[0], &curv)
        sd = 1.0 / sqrt(curv)
        nq = n_q
    else:
        mode[0] = 0.0
        sd = 0.0
        nq = 1
    mx = -1e300
    for m in range(nq):
        if nq == 1:
            lwork[m] = inner_g(p, 0.0, NULL, NULL) + 0.5 * LOG2PI
        else:
            xi = mode[0] + SQRT2 * sd * gx[m]
            lwork[m] = glw[m] + gx[m] * gx[m] + log(SQRT2 * sd) + inner_g(p, xi, NULL, NULL)
        if lwork[m] > mx:
            mx = lwork[m]
    tot = 0.0
    for m in range(nq):
        tot += exp(lwork[m] - mx)
    out.ll = mx + log(tot)
    if want == 0:
        return
    for i in range(3):
        out.D[i] = 0.0
    for i in range(9):
        out.DD[i] = 0.0
        out.H[i] = 0.0
    out.gtl = 0.0; out.gso = 0.0; out.k0 = 0.0; out.k1 = 0.0; out.k2 = 0.0
    for i in range(6):
        out.e[i] = 0.0
    for m in range(nq):
        w = exp(lwork[m] - mx) / tot
        xi = mode[0] + SQRT2 * sd * gx[m] if nq > 1 else 0.0
        K = exp(-p.v3 - p.sv * xi)
        tr = p.t0 - p.c * p.cphi * p.lam * xi
        P = 1.0 + K * p.c2 * p.sphi * p.sphi * p.lam
        mue = K * p.c * p.sphi * tr / P
        sde = 1.0 / sqrt(P)
        # theta1 = m1 + s1 eps, theta2 = m2 + s2 eps, eps ~ N(0, 1)
        m1 = p.cphi * xi + p.sphi * mue
        s1 = p.sphi * sde
        m2 = p.sphi * xi - p.cphi * mue
        s2 = -p.cphi * sde
        E[0] = 1.0
        E[1] = m1
        E[2] = m1 * m1 + s1 * s1
        E[3] = m1 * m1 * m1 + 3.0 * m1 * s1 * s1
        E[4] = m1 * m1 * m1 * m1 + 6.0 * m1 * m1 * s1 * s1 + 3.0 * s1 * s1 * s1 * s1
        e12 = m2 * E[1] + s2 * s1             # E theta1 theta2
        e112 = m2 * E[2] + 2.0 * s2 * m1 * s1  # E theta1^2 theta2
        # complete-data scores in (u3, v3, a3) as polynomials in theta1
        Du[0] = K * (p.b1 - p.u3 * p.s1); Du[1] = -K * p.c * p.sz; Du[2] = 0.0
        Dv[0] = -0.5 * p.n + 0.5 * K * p.q0; Dv[1] = -K * p.c * p.t0
        Dv[2] = 0.5 * K * p.c2 * p.lam
        Da[0] = 0.0; Da[1] = 0.5 * K * p.c * p.t0; Da[2] = -0.5 * K * p.c2 * p.lam
        for i in range(3):
            ED[i] = poly_e(Dp[i][0], Dp[i][1], Dp[i][2], E)
            out.D[i] += w * ED[i]
        if want == 2:
            out.gtl += w * (Dv[0] * E[1] + Dv[1] * E[2] + Dv[2] * E[3])
            out.gso += w * (Dv[0] * m2 + Dv[1] * e12 + Dv[2] * e112)
            out.k0 += w * K
            out.k1 += w * K * p.c * E[1]
            out.k2 += w * K * p.c2 * E[2]
            out.e[0] += w * p.c * E[1]
            out.e[1] += w * p.c2 * E[2]
            out.e[2] += w * p.sv * xi
            out.e[3] += w * p.sv * p.sv * xi * xi
            out.e[4] += w * p.c * E[1] * p.sv * xi
            out.e[5] += w * exp(p.sv * xi)
            continue
        for i in range(3):
            for j in range(i + 1):
                dd = w * poly_ee(Dp[i], Dp[j], E)
                out.DD[3 * i + j] += dd
                if j < i:
                    out.DD[3 * j + i] += dd
        out.H[0] += w * (-K * p.s1)
        dd = -ED[0]
        out.H[1] += w * dd
        out.H[3] += w * dd
        dd = -0.5 * K * p.c * p.sz * E[1]
        out.H[2] += w * dd
        out.H[6] += w * dd
        out.H[4] += w * (-(ED[1] + 0.5 * p.n))
        dd = -ED[2]
        out.H[5] += w * dd
        out.H[7] += w * dd
        out.H[8] += w * (-0.25 * K * p.c2 * p.lam * E[2] + 0.5 * ED[2])


cdef struct Outer:
    # shared inputs
    const double* stats
    const Py_ssize_t* optr
    const double* M       # 3 x d3, row-major
    int d3
    double sv, cphi, sphi
    int nq_in
    const double* gx_in
    const double* glw_in
    int nq_out
    const double* gx_out
    const double* glw_out
    double* cen           # K x (d3 + d3*d3): mode, Cholesky factor
    int cw
    double* modes_in      # J
    bint adapt
    # outputs
    double* ll            # K
    double* gM            # K x 3*d3
    double* gsch          # K x 2
    double* umom          # J x N_UM
    double* ebs           # J x N_EB
    double* ebd           # K x (d3 + d3*d3)


cdef double outer_G(Outer* o, Py_ssize_t k, const double* th, School* p, Inner* inn,
                    double* lwork, double* grad, double* hess) noexcept nogil:
    """log of prod_j L_j(b3) phi(theta3) and (if grad) its gradient and Hessian in theta3."""
    cdef int d = o.d3, a, b, r, c
    cdef double b3[3]
    cdef double Db[3]
    cdef double Hb[9]
    cdef double G = 0.0, s
    cdef Py_ssize_t j
    for r in range(3):
        s = 0.0
        for a in range(d):
            s += o.M[r * d + a] * th[a]
        b3[r] = s
        Db[r] = 0.0
    for r in range(9):
        Hb[r] = 0.0
    for j in range(o.optr[k], o.optr[k + 1]):
        school_given_b3(p, &o.stats[j * N_STATS], b3[0], b3[1], b3[2])
        inner_school(p, &o.modes_in[j], o.nq_in, o.gx_in, o.glw_in, lwork, inn,
                     1 if grad != NULL else 0)
        G += inn.ll
        if grad != NULL:
            for r in range(3):
                Db[r] += inn.D[r]
                for c in range(3):
                    Hb[3 * r + c] += inn.H[3 * r + c] + inn.DD[3 * r + c] - inn.D[r] * inn.D[c]
    for a in range(d):
        G -= 0.5 * (th[a] * th[a] + LOG2PI)
    if grad != NULL:
        for a in range(d):
            s = 0.0
            for r in range(3):
                s += o.M[r * d + a] * Db[r]
            grad[a] = s - th[a]
            for b in range(d):
                s = 0.0
                for r in range(3):
                    for c in range(3):
                        s += o.M[r * d + a] * Hb[3 * r + c] * o.M[c * d + b]
                hess[a * d + b] = s - (1.0 if a == b else 0.0)
    return G


cdef void outer_mode(Outer* o, Py_ssize_t k, School* p, Inner* inn, double* lwork,
                     double* th, double* grad, double* hess, double* work) noexcept nogil:
    """Mode of outer_G (Newton with Louis' Hessian, step halving; it stops when the
    Newton decrement is below 1e-12) and the Cholesky factor of the inverse of
    minus its Hessian there, written to o.cen[k]."""
    cdef int d = o.d3, it, a, b, h, ok
    cdef double G, Gn, t, smax, dec
    cdef double* cen = &o.cen[k * o.cw]
    cdef double* step = work
    cdef double* thn = work + 3
    cdef double* neg = work + 6
    cdef double* gradn = work + 15
    cdef double* hessn = work + 18
    for a in range(d):
        th[a] = cen[a]
    G = outer_G(o, k, th, p, inn, lwork, grad, hess)
    for it in range(60):
        for a in range(d * d):
            neg[a] = -hess[a]
        ok = chol(neg, d)
        for a in range(d):
            step[a] = grad[a]
        if ok:
            chol_solve(neg, d, step)
        dec = 0.0
        smax = 0.0
        for a in range(d):
            dec += grad[a] * step[a]
            if fabs(step[a]) > smax:
                smax = fabs(step[a])
        if ok and dec < 1e-12:
            break
        if smax > 2.0:
            for a in range(d):
                step[a] *= 2.0 / smax
        t = 1.0
        for h in range(40):
            for a in range(d):
                thn[a] = th[a] + t * step[a]
            Gn = outer_G(o, k, thn, p, inn, lwork, gradn, hessn)
            if Gn >= G - 1e-12 * fabs(G):
                break
            t *= 0.5
        for a in range(d):
            th[a] = thn[a]
            grad[a] = gradn[a]
        for a in range(d * d):
            hess[a] = hessn[a]
        G = Gn
        if t * smax < 1e-10:
            break
    # the node scale: Cholesky factor of (-H)^-1
    for a in range(d * d):
        neg[a] = -hess[a]
    if not chol(neg, d):
        for a in range(d * d):
            neg[a] = 0.0
        for a in range(d):
            neg[a * d + a] = 1.0
    for b in range(d):
        # column b of (-H)^-1
        for a in range(d):
            step[a] = 1.0 if a == b else 0.0
        chol_solve(neg, d, step)
        for a in range(d):
            hess[a * d + b] = step[a]
    if not chol(hess, d):
        for a in range(d * d):
            hess[a] = 0.0
        for a in range(d):
            hess[a * d + a] = 1.0
    for a in range(d):
        cen[a] = th[a]
    for a in range(d * d):
        cen[d + a] = hess[a]


cdef void one_district(Outer* o, Py_ssize_t k, double* buf, int* idx) noexcept nogil:
    cdef int d = o.d3, a, b, r, i
    cdef Py_ssize_t node, n_nodes = 1, j, j0 = o.optr[k], nj = o.optr[k + 1] - o.optr[k]
    cdef School p
    cdef Inner inn
    cdef double lw, G, mx = -1e300, sc, w, tot = 0.0, logdet = 0.0
    cdef double b3[3]
    cdef double Db[3]
    cdef double gtl, gso
    cdef double* lwork = buf
    cdef double* th = buf + o.nq_in
    cdef double* grad = th + 3
    cdef double* hess = grad + 3
    cdef double* work = hess + 9
    cdef double* snode = work + 27            # per school of the district: N_UM + N_EB
    cdef double* cen = &o.cen[k * o.cw]
    cdef double* gM = &o.gM[k * 3 * d]
    cdef double* ebd = &o.ebd[k * o.cw]
    p.sv = o.sv
    p.cphi = o.cphi
    p.sphi = o.sphi
    for a in range(d):
        n_nodes *= o.nq_out
    if o.adapt:
        outer_mode(o, k, &p, &inn, lwork, th, grad, hess, work)
    for a in range(d):
        logdet += log(SQRT2 * cen[d + a * d + a])
    # accumulators (rescaled as the running maximum of the log weights grows)
    for a in range(3 * d):
        gM[a] = 0.0
    o.gsch[2 * k] = 0.0
    o.gsch[2 * k + 1] = 0.0
    for a in range(o.cw):
        ebd[a] = 0.0
    for j in range(nj):
        for i in range(N_UM):
            o.umom[(j0 + j) * N_UM + i] = 0.0
        for i in range(N_EB):
            o.ebs[(j0 + j) * N_EB + i] = 0.0
    for node in range(n_nodes):
        lw = place_node(node, o.nq_out, d, idx, o.gx_out, o.glw_out, &cen[d], cen, th) + logdet
        for r in range(3):
            b3[r] = 0.0
            for a in range(d):
                b3[r] += o.M[r * d + a] * th[a]
            Db[r] = 0.0
        G = 0.0
        gtl = 0.0
        gso = 0.0
        for j in range(nj):
            school_given_b3(&p, &o.stats[(j0 + j) * N_STATS], b3[0], b3[1], b3[2])
            inner_school(&p, &o.modes_in[j0 + j], o.nq_in, o.gx_in, o.glw_in, lwork, &inn, 2)
            G += inn.ll
            for r in range(3):
                Db[r] += inn.D[r]
            gtl += inn.gtl
            gso += inn.gso
            i = j * (N_UM + N_EB)
            snode[i + 0] = inn.k0
            snode[i + 1] = b3[0] * inn.k0
            snode[i + 2] = b3[0] * b3[0] * inn.k0
            snode[i + 3] = inn.k1
            snode[i + 4] = inn.k2
            snode[i + 5] = b3[0] * inn.k1
            snode[i + 6] = inn.e[0]
            snode[i + 7] = inn.e[1]
            snode[i + 8] = inn.e[2]
            snode[i + 9] = inn.e[3]
            snode[i + 10] = inn.e[4]
            snode[i + 11] = b3[0] * inn.e[0]
            snode[i + 12] = b3[1] * inn.e[2]
            snode[i + 13] = b3[0] * inn.e[2]
            snode[i + 14] = b3[1] * inn.e[0]
            snode[i + 15] = exp(b3[1]) * inn.e[5]
        for a in range(d):
            G -= 0.5 * (th[a] * th[a] + LOG2PI)
        lw += G
        if lw > mx:
            # rescale what has been accumulated to the new maximum
            sc = exp(mx - lw) if mx > -1e299 else 0.0
            tot *= sc
            for a in range(3 * d):
                gM[a] *= sc
            o.gsch[2 * k] *= sc
            o.gsch[2 * k + 1] *= sc
            for a in range(o.cw):
                ebd[a] *= sc
            for j in range(nj):
                for i in range(N_UM):
                    o.umom[(j0 + j) * N_UM + i] *= sc
                for i in range(N_EB):
                    o.ebs[(j0 + j) * N_EB + i] *= sc
            mx = lw
        w = exp(lw - mx)
        tot += w
        for r in range(3):
            for a in range(d):
                gM[r * d + a] += w * Db[r] * th[a]
        o.gsch[2 * k] += w * gtl
        o.gsch[2 * k + 1] += w * gso
        for a in range(d):
            ebd[a] += w * th[a]
            for b in range(d):
                ebd[d + a * d + b] += w * th[a] * th[b]
        for j in range(nj):
            for i in range(N_UM):
                o.umom[(j0 + j) * N_UM + i] += w * snode[j * (N_UM + N_EB) + i]
            for i in range(N_EB):
                o.ebs[(j0 + j) * N_EB + i] += w * snode[j * (N_UM + N_EB) + N_UM + i]
    o.ll[k] = mx + log(tot)
    for a in range(3 * d):
        gM[a] /= tot
    o.gsch[2 * k] /= tot
    o.gsch[2 * k + 1] /= tot
    for a in range(o.cw):
        ebd[a] /= tot
    for j in range(nj):
        for i in range(N_UM):
            o.umom[(j0 + j) * N_UM + i] /= tot
        for i in range(N_EB):
            o.ebs[(j0 + j) * N_EB + i] /= tot


def nested_loglik(
    const double[:, ::1] stats,
    const Py_ssize_t[::1] outer_ptr,
    const double[:, ::1] M,
    double tau_l,
    double sigma_omega,
    const double[::1] gx_in,
    const double[::1] glw_in,
    const double[::1] gx_out,
    const double[::1] glw_out,
    double[:, ::1] centers,
    double[::1] modes_in,
    bint adapt,
    double[::1] ll,
    double[:, ::1] g_M,
    double[:, ::1] g_school,
    double[:, ::1] umom,
    double[:, ::1] eb_school,
    double[:, ::1] eb_district,
    int n_threads=1,
):
    """Log-likelihood of every district, the score pieces and the EB moments.

    Parameters
    ----------
    stats : (J, 8) each school's sums (see the module docstring), schools of a
        district contiguous
    outer_ptr : (K + 1,) offsets of each district's schools
    M : (3, d3) b3 = (u3, v3, a3) = M theta3 (rows of absent effects zero)
    tau_l, sigma_omega : the school-level scale effect v2 = tau_l theta1 + sigma_omega theta2
    gx_in, glw_in, gx_out, glw_out : Gauss-Hermite rules (inner 1-D; outer per dimension)
    centers : (K, d3 + d3^2) in/out: each district's mode and node scale (Cholesky)
    modes_in : (J,) in/out: warm starts of the school mode searches
    adapt : place the outer nodes anew (else use ``centers``)

    Outputs (written)
    -----------------
    ll : (K,) log-likelihood of each district
    g_M : (K, 3 d3) score in M (row-major)
    g_school : (K, 2) score in tau_l and sigma_omega
    umom : (J, 6) E K, E K u3, E K u3^2, E K t, E K t^2, E K u3 t, with
        K = exp(-(v3 + v2)) and t = c theta1 (the chain rule to beta, tau and alpha)
    eb_school : (J, 10) E t, E t^2, E v2, E v2^2, E t v2, E u3 t, E v3 v2,
        E u3 v2, E v3 t, E exp(v3 + v2)
    eb_district : (K, d3 + d3^2) E theta3, E theta3 theta3'
    """
    cdef Py_ssize_t n_d = outer_ptr.shape[0] - 1, k, max_j = 0, nb
    cdef int d3 = M.shape[1]
    cdef Outer o
    cdef double sv = sqrt(tau_l * tau_l + sigma_omega * sigma_omega)
    cdef double* buf
    cdef int* idx
    cdef int nt = n_threads if n_threads > 0 else 1
    if M.shape[0] != 3 or d3 < 1 or d3 > 3:
        raise ValueError("M must be 3 x d3 with 1 <= d3 <= 3")
    if stats.shape[1] != N_STATS or stats.shape[0] != outer_ptr[n_d]:
        raise ValueError("stats must be (J, 8) with J = outer_ptr[-1]")
    if centers.shape[0] != n_d or centers.shape[1] != d3 + d3 * d3:
        raise ValueError("centers has the wrong shape")
    for k in range(n_d):
        if outer_ptr[k + 1] - outer_ptr[k] > max_j:
            max_j = outer_ptr[k + 1] - outer_ptr[k]
    o.stats = &stats[0, 0]
    o.optr = &outer_ptr[0]
    o.M = &M[0, 0]
    o.d3 = d3
    o.sv = sv
    if sv > 0.0:
        o.cphi = tau_l / sv
        o.sphi = sigma_omega / sv
    else:
        o.cphi = 0.0
        o.sphi = 1.0
    o.nq_in = gx_in.shape[0]
    o.gx_in = &gx_in[0]
    o.glw_in = &glw_in[0]
    o.nq_out = gx_out.shape[0]
    o.gx_out = &gx_out[0]
    o.glw_out = &glw_out[0]
    o.cen = &centers[0, 0]
    o.cw = d3 + d3 * d3
    o.modes_in = &modes_in[0]
    o.adapt = adapt
    o.ll = &ll[0]
    o.gM = &g_M[0, 0]
    o.gsch = &g_school[0, 0]
    o.umom = &umom[0, 0]
    o.ebs = &eb_school[0, 0]
    o.ebd = &eb_district[0, 0]
    nb = o.nq_in + 3 + 3 + 9 + 27 + max_j * (N_UM + N_EB) + 8
    with nogil, parallel(num_threads=nt):
        buf = <double*> malloc(nb * sizeof(double))
        idx = <int*> malloc(4 * sizeof(int))
        for k in prange(n_d, schedule="dynamic"):
            one_district(&o, k, buf, idx)
        free(idx)
        free(buf)


def school_sums(const double[::1] r0, const double[::1] logd, const double[::1] z,
                const Py_ssize_t[::1] group_ptr, double[:, ::1] stats):
    """Each school's eight sums (one pass over the students): n, sum log d,
    sum z^2/d, sum z/d, sum 1/d, sum z r0/d, sum r0/d, sum r0^2/d, with d = exp(logd)."""
    cdef Py_ssize_t j, i, n_groups = group_ptr.shape[0] - 1
    cdef double s[8]
    cdef double inv, zi, ri
    cdef int a
    if stats.shape[0] != n_groups or stats.shape[1] != N_STATS:
        raise ValueError("stats must be (n_groups, 8)")
    with nogil:
        for j in range(n_groups):
            for a in range(8):
                s[a] = 0.0
            for i in range(group_ptr[j], group_ptr[j + 1]):
                inv = exp(-logd[i])
                zi = z[i]
                ri = r0[i]
                s[1] += logd[i]
                s[2] += zi * zi * inv
                s[3] += zi * inv
                s[4] += inv
                s[5] += zi * ri * inv
                s[6] += ri * inv
                s[7] += ri * ri * inv
            s[0] = group_ptr[j + 1] - group_ptr[j]
            for a in range(8):
                stats[j, a] = s[a]


def unit_gradients(const double[::1] r0, const double[::1] logd, const double[::1] z,
                   const Py_ssize_t[::1] group_ptr, const double[:, ::1] umom,
                   double[::1] g_mu, double[::1] g_ws, double[::1] g_bs):
    """Each student's score in the mean, WS and BS linear predictors from the
    school's posterior moments ``umom`` (see nested_loglik): one pass."""
    cdef Py_ssize_t j, i, n_groups = group_ptr.shape[0] - 1
    cdef double m0, m1, m2, m3, m4, m5, inv, zi, ri, e1, e2, et
    with nogil:
        for j in range(n_groups):
            m0 = umom[j, 0]; m1 = umom[j, 1]; m2 = umom[j, 2]
            m3 = umom[j, 3]; m4 = umom[j, 4]; m5 = umom[j, 5]
            for i in range(group_ptr[j], group_ptr[j + 1]):
                inv = exp(-logd[i])
                zi = z[i]
                ri = r0[i]
                e1 = ri * m0 - m1 - zi * m3
                e2 = (ri * ri * m0 + m2 + zi * zi * m4 - 2.0 * ri * m1 - 2.0 * ri * zi * m3
                      + 2.0 * zi * m5)
                et = ri * m3 - m5 - zi * m4
                g_mu[i] = e1 * inv
                g_ws[i] = -0.5 * (1.0 - e2 * inv)
                g_bs[i] = 0.5 * zi * et * inv
