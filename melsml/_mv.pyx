# cython: language_level=3
"""Per-student passes of the multivariate MELS likelihood (several outcomes).

Student i with observed-outcome pattern p_i has G_i[m, l] = e_im e_il
R_p^-1[m, l] (e_im = exp(-eta_im / 2), 0 for a missing outcome).  ``mv_sums``
forms each school's M x M sums of G, G r0 and G r0 r0; ``mv_unit_scores``
each student's score in his means and WS linear predictors, and each
school's sums of E[s_i s_i'] by pattern, from the school's posterior moments
K0 = E[k_m k_l], K1 = E[k_m k_l u_l], K2 = E[k_m k_l u_m u_l] (k = exp(-v/2)).
Schools run in parallel (OpenMP where the compiler has it); each writes only
its own rows, so results do not depend on the number of threads.
"""

from cython.parallel cimport prange

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int melsml_mv_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int melsml_mv_max_threads(void) { return 1; }
    #endif
    """
    int melsml_mv_max_threads() noexcept nogil


def mv_sums(
    const double[:, ::1] r0,
    const double[:, ::1] e,
    const double[:, :, ::1] rinv,
    const Py_ssize_t[::1] pattern,
    const Py_ssize_t[::1] group_ptr,
    double[:, :, ::1] lam0,
    double[:, :, ::1] b0,
    double[:, :, ::1] a0,
    int n_threads=0,
):
    """Each school's sums: lam0 = sum G, b0[m, l] = sum G[m, l] r0_l,
    a0[m, l] = sum G[m, l] r0_m r0_l (outputs (n_groups, M, M))."""
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef int M = r0.shape[1]
    cdef Py_ssize_t j, i
    cdef int a, b
    cdef double g
    cdef int nt = n_threads if n_threads > 0 else melsml_mv_max_threads()
    for j in prange(n_groups, nogil=True, schedule="dynamic", num_threads=nt):
        for a in range(M):
            for b in range(M):
                lam0[j, a, b] = 0.0
                b0[j, a, b] = 0.0
                a0[j, a, b] = 0.0
        for i in range(group_ptr[j], group_ptr[j + 1]):
            for a in range(M):
                if e[i, a] == 0.0:
                    continue
                for b in range(M):
                    g = e[i, a] * e[i, b] * rinv[pattern[i], a, b]
                    lam0[j, a, b] += g
                    b0[j, a, b] += g * r0[i, b]
                    a0[j, a, b] += g * r0[i, a] * r0[i, b]


def mv_unit_scores(
    const double[:, ::1] r0,
    const double[:, ::1] e,
    const double[:, :, ::1] rinv,
    const Py_ssize_t[::1] pattern,
    const Py_ssize_t[::1] group_ptr,
    const double[:, :, ::1] k0,
    const double[:, :, ::1] k1,
    const double[:, :, ::1] k2,
    double[:, ::1] g_mu,
    double[:, ::1] g_ws,
    double[:, :, :, ::1] ss,
    int n_threads=0,
):
    """Students' scores in their means (g_mu) and WS linear predictors (g_ws),
    and each school's sum of E[s_i s_i'] by pattern (ss: (n_groups, P, M, M))."""
    cdef Py_ssize_t n_groups = group_ptr.shape[0] - 1
    cdef int M = r0.shape[1]
    cdef int n_pat = rinv.shape[0]
    cdef Py_ssize_t j, i
    cdef int a, b, p
    cdef double g, er, gm, gw
    cdef int nt = n_threads if n_threads > 0 else melsml_mv_max_threads()
    for j in prange(n_groups, nogil=True, schedule="dynamic", num_threads=nt):
        for p in range(n_pat):
            for a in range(M):
                for b in range(M):
                    ss[j, p, a, b] = 0.0
        for i in range(group_ptr[j], group_ptr[j + 1]):
            p = pattern[i]
            for a in range(M):
                if e[i, a] == 0.0:
                    g_mu[i, a] = 0.0
                    g_ws[i, a] = 0.0
                    continue
                gm = 0.0
                gw = 0.0
                for b in range(M):
                    if e[i, b] == 0.0:
                        continue
                    g = e[i, a] * e[i, b] * rinv[p, a, b]
                    gm = gm + g * (k0[j, a, b] * r0[i, b] - k1[j, a, b])
                    er = (k0[j, a, b] * r0[i, a] * r0[i, b] - r0[i, a] * k1[j, a, b]
                          - r0[i, b] * k1[j, b, a] + k2[j, a, b])
                    gw = gw + g * er
                    ss[j, p, a, b] += e[i, a] * e[i, b] * er
                g_mu[i, a] = gm
                g_ws[i, a] = -0.5 + 0.5 * gw
