# cython: language_level=3
"""Small dense helpers the compiled kernels share (inline, no GIL)."""

from libc.math cimport sqrt


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
