/* exprc loop stepper: runs steps [start, n) of a loop whose body is one native call.
 *
 * Before step t, each moving pointer i is set to base[i] + row * stride[i] with
 * row = t + off[i], reduced modulo mod[i] when mod[i] > 0 (a ring of state rows); then each
 * derived pointer (a view of a moving one) is set to ptrs[vbase[j]] + voff[j].  The body's
 * entry point runs its kernels [0, nkernels).  When cond is not NULL the loop stops after the
 * step that wrote a nonzero byte there (scan's until).  Returns the number of steps done in
 * all (start counts as done); -1 when there are more moving pointers than it takes. */
#include <stdint.h>

#define EXPRC_LOOP_MAX_MOVES 1024

typedef void (*exprc_run_fn)(char **ptrs, const int64_t *P, int64_t first, int64_t last, int nthreads);

int64_t exprc_loop_steps(void *run, char **ptrs, const int64_t *P, int64_t nkernels, int nthreads,
                         int64_t start, int64_t n,
                         int64_t nmoves, const int64_t *slot, char *const *base, const int64_t *stride,
                         const int64_t *off, const int64_t *mod,
                         int64_t nviews, const int64_t *vslot, const int64_t *vbase, const int64_t *voff,
                         const char *cond)
{
    exprc_run_fn fn = (exprc_run_fn)run;
    /* Each moving pointer's row advances by one per step and wraps at its ring size: an add and
     * a compare per pointer, no division in the loop. */
    int64_t row[EXPRC_LOOP_MAX_MOVES];
    if (nmoves > EXPRC_LOOP_MAX_MOVES)
        return -1;
    for (int64_t i = 0; i < nmoves; i++)
        row[i] = mod[i] > 0 ? (start + off[i]) % mod[i] : start + off[i];
    for (int64_t t = start; t < n; t++) {
        for (int64_t i = 0; i < nmoves; i++) {
            ptrs[slot[i]] = base[i] + row[i] * stride[i];
            if (++row[i] == mod[i])
                row[i] = 0;
        }
        for (int64_t j = 0; j < nviews; j++)
            ptrs[vslot[j]] = ptrs[vbase[j]] + voff[j];
        fn(ptrs, P, 0, nkernels, nthreads);
        if (cond != 0 && *cond)
            return t + 1;
    }
    return n;
}
