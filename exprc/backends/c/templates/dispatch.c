/* exprc call dispatcher: a small CPython extension built once per Python/NumPy
 * version (and cached).  It owns the common call path of compiled functions:
 * check the argument arrays against the signature, find the plan for their
 * shapes, allocate the outputs, fill the pointer table and call the generated
 * library with the GIL released.  Anything unusual (other dtypes, array views
 * as arguments, non-contiguous arrays, a shape without a plan) returns None so
 * that the Python path, which raises the precise errors, takes over.  Views the
 * graph takes of its inputs and outputs (a transpose, a slice) are slots at a
 * fixed byte offset from their base, fixed per plan because the arguments are
 * C-contiguous with the plan's shapes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <string.h>

typedef void (*run_fn)(char **, const int64_t *, int64_t, int64_t, int);

#define EXPRC_MAX_PLANS 8
#define EXPRC_MAX_SLOTS 256
#define EXPRC_MAX_ARGS 64
#define EXPRC_MAX_DIMS 32

typedef struct {
    int used, busy;
    npy_intp *in_shapes;   /* concatenated shapes of the inputs */
    const int64_t *P;
    char **ptrs;           /* template pointer table: scratch slots already set */
    int nout;
    int *out_slot, *out_ndim, *out_type;
    npy_intp *out_shapes;  /* concatenated */
    int nviews;
    int64_t *views;        /* (slot, base slot, byte offset) triples, applied in order */
    PyObject *keep;        /* keeps P, the pointer table and scratch buffers alive */
} plan_t;

typedef struct {
    PyObject_HEAD
    run_fn run;
    int nin, nslots, nkernels, nthreads, single;
    int in_type[EXPRC_MAX_ARGS], in_ndim[EXPRC_MAX_ARGS];
    plan_t plans[EXPRC_MAX_PLANS];
} Dispatcher;

static int serial_after_fork = 0;

/* Large outputs come from a small pool of blocks that earlier outputs of the same size gave back.
 * glibc serves a block of 32 MiB or more with a fresh mmap and unmaps it on free, so each call
 * returning, say, 80 MB paid the kernel's zeroing of every page on first touch (about a fifth of
 * bench/run.py's E2 at 1e7 elements); blocks below that size glibc already reuses.  The
 * arrays are NumPy's own (NEP 49: they own their data and remember this handler, which frees them
 * back into the pool), so views, resize and pickling behave as for np.empty.  A block is reused
 * only once the array that owned it, and every view of it, is gone.  The pool keeps at most
 * 512 MiB (or a 16th of the memory, if less), or what $EXPRC_POOL_BYTES says (0: no pool). */
#include <stdlib.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#define EXPRC_POOL_MIN ((size_t)32 << 20)
#define EXPRC_POOL_SLOTS 8
static struct { void *p; size_t n; } pool[EXPRC_POOL_SLOTS];
static size_t pool_bytes = 0, pool_limit = (size_t)512 << 20;
static unsigned long long pool_reused = 0;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;  /* (the GIL, unless a free runs without it) */
static PyObject *pool_capsule = NULL;

/* Free kept blocks, slot by slot, until the pool holds at most keep bytes (the caller holds pool_lock). */
static void pool_shrink(size_t keep) {
    for (int i = 0; i < EXPRC_POOL_SLOTS && pool_bytes > keep; i++) {
        if (pool[i].p) { free(pool[i].p); pool_bytes -= pool[i].n; pool[i].p = NULL; }
    }
}

static void *pool_malloc(void *ctx, size_t n) {
    (void)ctx;
    if (n >= EXPRC_POOL_MIN) {
        pthread_mutex_lock(&pool_lock);
        for (int i = 0; i < EXPRC_POOL_SLOTS; i++) {
            if (pool[i].p && pool[i].n == n) {
                void *p = pool[i].p;
                pool[i].p = NULL;
                pool_bytes -= n;
                pool_reused++;
                pthread_mutex_unlock(&pool_lock);
                return p;
            }
        }
        pthread_mutex_unlock(&pool_lock);
    }
    void *p = malloc(n);
    if (!p) {  /* (the kept blocks may be what the memory lacks) */
        pthread_mutex_lock(&pool_lock);
        pool_shrink(0);
        pthread_mutex_unlock(&pool_lock);
        p = malloc(n);
    }
#ifdef MADV_HUGEPAGE
    if (p && n >= ((size_t)4 << 20)) {  /* (as NumPy's own allocator does for large blocks) */
        uintptr_t lo = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, hi = ((uintptr_t)p + n) & ~(uintptr_t)4095;
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
#endif
    return p;
}

static void *pool_calloc(void *ctx, size_t nelem, size_t elsize) { (void)ctx; return calloc(nelem, elsize); }
static void *pool_realloc(void *ctx, void *p, size_t n) { (void)ctx; return realloc(p, n); }

static void pool_free(void *ctx, void *p, size_t n) {
    (void)ctx;
    if (p && n >= EXPRC_POOL_MIN && n <= pool_limit) {
        pthread_mutex_lock(&pool_lock);
        /* Keep it in an empty slot, evicting the slot that holds the most where the cap needs room. */
        while (pool_bytes + n > pool_limit) {
            int big = -1;
            for (int i = 0; i < EXPRC_POOL_SLOTS; i++) if (pool[i].p && (big < 0 || pool[i].n > pool[big].n)) big = i;
            if (big < 0) break;
            free(pool[big].p);
            pool_bytes -= pool[big].n;
            pool[big].p = NULL;
        }
        for (int i = 0; i < EXPRC_POOL_SLOTS; i++) {
            if (!pool[i].p && pool_bytes + n <= pool_limit) {
                pool[i].p = p;
                pool[i].n = n;
                pool_bytes += n;
                pthread_mutex_unlock(&pool_lock);
                return;
            }
        }
        pthread_mutex_unlock(&pool_lock);
    }
    free(p);
}

static PyDataMem_Handler pool_handler = {
    "exprc_pool", 1, {NULL, pool_malloc, pool_calloc, pool_realloc, pool_free}
};

/* A fresh C-contiguous array, from the pool when it is large. */
static PyObject *new_output(int ndim, npy_intp *dims, int type) {
    if (pool_capsule && pool_limit) {
        PyArray_Descr *descr = PyArray_DescrFromType(type);
        if (!descr) return NULL;
        size_t n = (size_t)PyArray_MultiplyList(dims, ndim) * (size_t)PyDataType_ELSIZE(descr);
        Py_DECREF(descr);
        if (n >= EXPRC_POOL_MIN && n <= pool_limit) {
            PyObject *old = PyDataMem_SetHandler(pool_capsule);
            if (!old) return NULL;
            PyObject *a = PyArray_EMPTY(ndim, dims, type, 0);
            PyObject *back = PyDataMem_SetHandler(old);
            Py_DECREF(old);
            if (!back) { Py_XDECREF(a); return NULL; }
            Py_DECREF(back);
            return a;
        }
    }
    return PyArray_EMPTY(ndim, dims, type, 0);
}

static void plan_clear(plan_t *p) {
    PyMem_Free(p->in_shapes); PyMem_Free(p->out_slot); PyMem_Free(p->out_ndim);
    PyMem_Free(p->out_type); PyMem_Free(p->out_shapes); PyMem_Free(p->views);
    Py_CLEAR(p->keep);
    memset(p, 0, sizeof(*p));
}

static void Dispatcher_dealloc(Dispatcher *self) {
    for (int i = 0; i < EXPRC_MAX_PLANS; i++) plan_clear(&self->plans[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Dispatcher_init(Dispatcher *self, PyObject *args, PyObject *kw) {
    unsigned long long fn;
    PyObject *types;
    if (!PyArg_ParseTuple(args, "KO!iiip", &fn, &PyTuple_Type, &types, &self->nslots, &self->nkernels,
                          &self->nthreads, &self->single))
        return -1;
    self->run = (run_fn)(uintptr_t)fn;
    self->nin = (int)PyTuple_GET_SIZE(types);
    if (self->nin > EXPRC_MAX_ARGS || self->nslots > EXPRC_MAX_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "too many arguments or slots for the dispatcher");
        return -1;
    }
    for (int i = 0; i < self->nin; i++) {
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(types, i), "ii", &self->in_type[i], &self->in_ndim[i]))
            return -1;
    }
    return 0;
}

/* add_plan(in_shapes, P_addr, ptrs_addr, out_specs, views, keep) -> bool
 * out_specs: tuple of (slot, shape tuple, typenum); views: tuple of (slot, base slot, byte offset). */
static PyObject *Dispatcher_add_plan(Dispatcher *self, PyObject *args) {
    PyObject *shapes, *outs, *views, *keep;
    unsigned long long P, ptrs;
    if (!PyArg_ParseTuple(args, "O!KKO!O!O", &PyTuple_Type, &shapes, &P, &ptrs, &PyTuple_Type, &outs,
                          &PyTuple_Type, &views, &keep))
        return NULL;
    plan_t *p = NULL;
    for (int i = 0; i < EXPRC_MAX_PLANS; i++) if (!self->plans[i].used) { p = &self->plans[i]; break; }
    if (!p) Py_RETURN_FALSE;
    int total = 0;
    for (int i = 0; i < self->nin; i++) total += self->in_ndim[i];
    if (PyTuple_GET_SIZE(shapes) != self->nin) { PyErr_SetString(PyExc_ValueError, "shapes"); return NULL; }
    int nout = (int)PyTuple_GET_SIZE(outs);
    int ototal = 0;
    for (int j = 0; j < nout; j++) {
        PyObject *shp = PyTuple_GetItem(PyTuple_GetItem(outs, j), 1);
        if (!shp || !PyTuple_Check(shp)) { PyErr_SetString(PyExc_ValueError, "out spec"); return NULL; }
        ototal += (int)PyTuple_GET_SIZE(shp);
    }
    p->in_shapes = PyMem_Calloc(total + 1, sizeof(npy_intp));
    p->out_slot = PyMem_Calloc(nout + 1, sizeof(int));
    p->out_ndim = PyMem_Calloc(nout + 1, sizeof(int));
    p->out_type = PyMem_Calloc(nout + 1, sizeof(int));
    p->out_shapes = PyMem_Calloc(ototal + 1, sizeof(npy_intp));
    p->nviews = (int)PyTuple_GET_SIZE(views);
    p->views = PyMem_Calloc(3 * p->nviews + 1, sizeof(int64_t));
    if (!p->in_shapes || !p->out_slot || !p->out_ndim || !p->out_type || !p->out_shapes || !p->views) {
        plan_clear(p); return PyErr_NoMemory();
    }
    int k = 0;
    for (int i = 0; i < self->nin; i++) {
        PyObject *s = PyTuple_GET_ITEM(shapes, i);
        if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) != self->in_ndim[i]) {
            plan_clear(p); PyErr_SetString(PyExc_ValueError, "input shape"); return NULL;
        }
        for (int d = 0; d < self->in_ndim[i]; d++) p->in_shapes[k++] = PyLong_AsSsize_t(PyTuple_GET_ITEM(s, d));
    }
    k = 0;
    for (int j = 0; j < nout; j++) {
        PyObject *spec = PyTuple_GET_ITEM(outs, j);
        PyObject *shp = PyTuple_GET_ITEM(spec, 1);
        p->out_slot[j] = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
        p->out_type[j] = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 2));
        p->out_ndim[j] = (int)PyTuple_GET_SIZE(shp);
        if (p->out_slot[j] < 0 || p->out_slot[j] >= self->nslots || p->out_ndim[j] > EXPRC_MAX_DIMS) {
            plan_clear(p); PyErr_SetString(PyExc_ValueError, "output slot"); return NULL;
        }
        for (int d = 0; d < p->out_ndim[j]; d++) p->out_shapes[k++] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shp, d));
    }
    for (int v = 0; v < p->nviews; v++) {
        PyObject *t = PyTuple_GET_ITEM(views, v);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            plan_clear(p); PyErr_SetString(PyExc_ValueError, "view spec"); return NULL;
        }
        for (int c = 0; c < 3; c++) p->views[3 * v + c] = PyLong_AsLongLong(PyTuple_GET_ITEM(t, c));
        if (p->views[3 * v] < 0 || p->views[3 * v] >= self->nslots || p->views[3 * v + 1] < 0 ||
            p->views[3 * v + 1] >= self->nslots) {
            plan_clear(p); PyErr_SetString(PyExc_ValueError, "view slot"); return NULL;
        }
    }
    if (PyErr_Occurred()) { plan_clear(p); return NULL; }
    p->P = (const int64_t *)(uintptr_t)P;
    p->ptrs = (char **)(uintptr_t)ptrs;
    p->nout = nout;
    Py_INCREF(keep);
    p->keep = keep;
    p->used = 1;
    Py_RETURN_TRUE;
}

/* The plan for these arguments, with the arrays in arr; NULL when the dispatcher does not take them. */
static plan_t *match_plan(Dispatcher *self, PyObject *args, PyArrayObject **arr) {
    if (PyTuple_GET_SIZE(args) != self->nin) return NULL;
    for (int i = 0; i < self->nin; i++) {
        PyObject *o = PyTuple_GET_ITEM(args, i);
        if (Py_TYPE(o) != &PyArray_Type) return NULL;
        PyArrayObject *a = (PyArrayObject *)o;
        if (PyArray_TYPE(a) != self->in_type[i] || PyArray_NDIM(a) != self->in_ndim[i] ||
            !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || PyArray_ISBYTESWAPPED(a))
            return NULL;
        arr[i] = a;
    }
    for (int k = 0; k < EXPRC_MAX_PLANS; k++) {
        plan_t *q = &self->plans[k];
        if (!q->used || q->busy) continue;
        int off = 0, ok = 1;
        for (int i = 0; i < self->nin && ok; i++) {
            npy_intp *dims = PyArray_DIMS(arr[i]);
            for (int d = 0; d < self->in_ndim[i]; d++) if (dims[d] != q->in_shapes[off + d]) { ok = 0; break; }
            off += self->in_ndim[i];
        }
        if (ok) return q;
    }
    return NULL;
}

/* Whether o is an ndarray of output j's dtype and shape (plan p); with ``buffer``, also one the
 * kernels can write into (C-contiguous, aligned, writeable, native byte order). */
static int fits(plan_t *p, int j, npy_intp *dims, PyObject *o, int buffer) {
    if (Py_TYPE(o) != &PyArray_Type) return 0;
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != p->out_type[j] || PyArray_NDIM(a) != p->out_ndim[j]) return 0;
    if (buffer && (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISWRITEABLE(a) ||
                   PyArray_ISBYTESWAPPED(a)))
        return 0;
    for (int d = 0; d < p->out_ndim[j]; d++) if (PyArray_DIMS(a)[d] != dims[d]) return 0;
    return 1;
}

/* Run plan p: outs[j] already set (a new reference) where the caller gives a buffer, NULL where
 * a fresh array is wanted.  Returns 0, or -1 with an exception set (outs released). */
static int run_plan(Dispatcher *self, plan_t *p, PyArrayObject **arr, PyObject **outs) {
    /* The plan's scratch buffers are ours until the call returns (taken before anything that could
     * run other Python code). */
    p->busy = 1;
    char *ptrs[EXPRC_MAX_SLOTS];
    memcpy(ptrs, p->ptrs, sizeof(char *) * self->nslots);
    for (int i = 0; i < self->nin; i++) ptrs[i] = PyArray_BYTES(arr[i]);
    int off = 0;
    for (int j = 0; j < p->nout; j++) {
        if (!outs[j]) outs[j] = new_output(p->out_ndim[j], p->out_shapes + off, p->out_type[j]);
        off += p->out_ndim[j];
        if (!outs[j]) { for (int t = 0; t < p->nout; t++) Py_CLEAR(outs[t]); p->busy = 0; return -1; }
        ptrs[p->out_slot[j]] = PyArray_BYTES((PyArrayObject *)outs[j]);
    }
    for (int v = 0; v < p->nviews; v++) {
        const int64_t *t = p->views + 3 * v;
        ptrs[t[0]] = ptrs[t[1]] + t[2];
    }
    int nthreads = serial_after_fork ? 1 : self->nthreads;
    Py_BEGIN_ALLOW_THREADS
    self->run(ptrs, p->P, 0, self->nkernels, nthreads);
    Py_END_ALLOW_THREADS
    p->busy = 0;
    return 0;
}

static PyObject *as_list(PyObject **outs, int n) {
    PyObject *list = PyList_New(n);
    if (!list) { for (int j = 0; j < n; j++) Py_DECREF(outs[j]); return NULL; }
    for (int j = 0; j < n; j++) PyList_SET_ITEM(list, j, outs[j]);
    return list;
}

static PyObject *Dispatcher_call(Dispatcher *self, PyObject *args, PyObject *kw) {
    if (kw && PyDict_GET_SIZE(kw)) Py_RETURN_NONE;
    PyArrayObject *arr[EXPRC_MAX_ARGS];
    plan_t *p = match_plan(self, args, arr);
    if (!p) Py_RETURN_NONE;
    PyObject *outs[EXPRC_MAX_SLOTS] = {NULL};
    if (run_plan(self, p, arr, outs) < 0) return NULL;
    if (self->single && p->nout == 1) return outs[0];
    return as_list(outs, p->nout);
}

/* Whether an out= array shares bytes with an argument (its memory range meets theirs): the
 * kernels would read what they already wrote.  The Python path then computes into fresh arrays
 * and copies, as NumPy does for overlapping ufunc operands. */
static int overlaps_inputs(Dispatcher *self, PyArrayObject **arr, PyArrayObject *o) {
    char *lo = PyArray_BYTES(o), *hi = lo + PyArray_NBYTES(o);
    for (int i = 0; i < self->nin; i++) {
        char *a = PyArray_BYTES(arr[i]), *b = a + PyArray_NBYTES(arr[i]);
        if (a < hi && lo < b) return 1;
    }
    return 0;
}

/* into(args, outs) -> list | None: a call writing output j into outs[j] (None: a fresh array).
 * Each given array must fit (dtype, shape, C-contiguous, aligned, writeable); else None and the
 * Python path takes the call (and raises the precise error). */
static PyObject *Dispatcher_into(Dispatcher *self, PyObject *a) {
    PyObject *args, *given;
    if (!PyArg_ParseTuple(a, "O!O", &PyTuple_Type, &args, &given)) return NULL;
    PyArrayObject *arr[EXPRC_MAX_ARGS];
    plan_t *p = match_plan(self, args, arr);
    if (!p || !PyList_Check(given) || PyList_GET_SIZE(given) != p->nout) Py_RETURN_NONE;
    PyObject *outs[EXPRC_MAX_SLOTS] = {NULL};
    int off = 0;
    for (int j = 0; j < p->nout; j++) {
        PyObject *o = PyList_GET_ITEM(given, j);
        if (o != Py_None) {
            if (!fits(p, j, p->out_shapes + off, o, 1) || overlaps_inputs(self, arr, (PyArrayObject *)o)) {
                for (int t = 0; t < j; t++) Py_XDECREF(outs[t]);
                Py_RETURN_NONE;
            }
            Py_INCREF(o);
            outs[j] = o;
        }
        off += p->out_ndim[j];
    }
    if (run_plan(self, p, arr, outs) < 0) return NULL;
    if (self->single && p->nout == 1) return outs[0];
    return as_list(outs, p->nout);
}

static PyObject *s_value, *s_spare, *s_acquire, *s_release;  /* interned attribute names */

/* The update call proper (the caller holds the locks): see Dispatcher_update. */
static PyObject *update_locked(Dispatcher *self, PyObject *args, PyObject *boxes) {
    PyArrayObject *arr[EXPRC_MAX_ARGS];
    plan_t *p = match_plan(self, args, arr);
    int nb = (int)PyTuple_GET_SIZE(boxes);
    if (!p || nb > p->nout) Py_RETURN_NONE;
    int first = p->nout - nb;
    PyObject *outs[EXPRC_MAX_SLOTS] = {NULL};
    PyObject *old[EXPRC_MAX_SLOTS] = {NULL};
    int off = 0;
    for (int j = 0; j < p->nout; j++) {
        npy_intp *dims = p->out_shapes + off;
        off += p->out_ndim[j];
        if (j < first) continue;
        PyObject *box = PyTuple_GET_ITEM(boxes, j - first);
        PyObject *value = PyObject_GetAttr(box, s_value);
        PyObject *spare = value ? PyObject_GetAttr(box, s_spare) : NULL;
        old[j] = value;
        if (!spare || !fits(p, j, dims, value, 0)) {  /* new shape != old shape (or an odd value) */
            Py_XDECREF(spare);
            PyErr_Clear();
            for (int t = 0; t < p->nout; t++) { Py_XDECREF(outs[t]); Py_XDECREF(old[t]); }
            Py_RETURN_NONE;
        }
        /* 2 references: the box's slot and ours.  More: someone else holds it, so it is not ours to overwrite;
         * nor is a view (set_value(view, borrow=True)): whoever holds its base holds the memory. */
        if (Py_REFCNT(spare) == 2 && spare != value && fits(p, j, dims, spare, 1) &&
            PyArray_BASE((PyArrayObject *)spare) == NULL)
            outs[j] = spare;
        else Py_DECREF(spare);
    }
    if (run_plan(self, p, arr, outs) < 0) {
        for (int t = 0; t < p->nout; t++) Py_XDECREF(old[t]);
        return NULL;
    }
    int failed = 0;
    for (int j = first; j < p->nout; j++) {
        PyObject *box = PyTuple_GET_ITEM(boxes, j - first);
        if (!failed && (PyObject_SetAttr(box, s_spare, old[j]) < 0 || PyObject_SetAttr(box, s_value, outs[j]) < 0))
            failed = 1;
        Py_DECREF(old[j]);
    }
    PyObject *list = as_list(outs, p->nout);
    if (failed) { Py_XDECREF(list); return NULL; }
    return list;
}

static void release(PyObject *locks, Py_ssize_t n) {
    PyObject *et, *ev, *tb;  /* PyErr_Fetch: Python 3.11 has no PyErr_GetRaisedException */
    PyErr_Fetch(&et, &ev, &tb);
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        PyObject *r = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(locks, i), s_release);
        if (r) Py_DECREF(r); else PyErr_Clear();
    }
    PyErr_Restore(et, ev, tb);
}

/* update(args, hidden, boxes, locks) -> list | None: one call of a function with updates.
 * ``hidden``: boxes whose ``value`` attributes follow ``args`` as arguments (shared variables
 * the function reads); ``boxes``: the boxes (``value``/``spare``) of the variables the last
 * len(boxes) outputs update; ``locks``: taken in order around the whole call.  Each new value
 * is written into its box's spare buffer when nothing else references that buffer and it fits,
 * else into a fresh array; then every box gets (value, spare) = (new value, old value).  None,
 * with nothing run or changed, when the dispatcher does not take the arguments or a new value's
 * shape differs from the old one (the Python path then raises the precise error). */
static PyObject *Dispatcher_update(Dispatcher *self, PyObject *a) {
    PyObject *args, *hidden, *boxes, *locks;
    if (!PyArg_ParseTuple(a, "O!O!O!O!", &PyTuple_Type, &args, &PyTuple_Type, &hidden, &PyTuple_Type, &boxes,
                          &PyTuple_Type, &locks))
        return NULL;
    Py_ssize_t na = PyTuple_GET_SIZE(args), nh = PyTuple_GET_SIZE(hidden), nl = PyTuple_GET_SIZE(locks);
    if (na + nh != self->nin) Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < nl; i++) {
        PyObject *r = PyObject_CallMethodNoArgs(PyTuple_GET_ITEM(locks, i), s_acquire);
        if (!r) { release(locks, i); return NULL; }
        Py_DECREF(r);
    }
    PyObject *full = PyTuple_New(self->nin);  /* read the values under the locks */
    PyObject *res = NULL;
    if (full) {
        for (Py_ssize_t i = 0; i < na; i++) {
            Py_INCREF(PyTuple_GET_ITEM(args, i));
            PyTuple_SET_ITEM(full, i, PyTuple_GET_ITEM(args, i));
        }
        int ok = 1;
        for (Py_ssize_t i = 0; i < nh && ok; i++) {
            PyObject *v = PyObject_GetAttr(PyTuple_GET_ITEM(hidden, i), s_value);
            if (!v) { ok = 0; break; }
            PyTuple_SET_ITEM(full, na + i, v);
        }
        if (ok) res = update_locked(self, full, boxes);
        Py_DECREF(full);
    }
    release(locks, nl);
    return res;
}

static PyObject *Dispatcher_clear(Dispatcher *self, PyObject *unused) {
    for (int i = 0; i < EXPRC_MAX_PLANS; i++) if (!self->plans[i].busy) plan_clear(&self->plans[i]);
    Py_RETURN_NONE;
}

static PyMethodDef Dispatcher_methods[] = {
    {"add_plan", (PyCFunction)Dispatcher_add_plan, METH_VARARGS, "Register a plan for one input signature."},
    {"into", (PyCFunction)Dispatcher_into, METH_VARARGS, "Call, writing outputs into given arrays."},
    {"update", (PyCFunction)Dispatcher_update, METH_VARARGS, "Call, then install the new values of shared variables."},
    {"clear", (PyCFunction)Dispatcher_clear, METH_NOARGS, "Forget every plan."},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "exprc_dispatch.Dispatcher",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatcher_init,
    .tp_dealloc = (destructor)Dispatcher_dealloc,
    .tp_call = (ternaryfunc)Dispatcher_call,
    .tp_methods = Dispatcher_methods,
    .tp_doc = "Fast call path of one compiled exprc function.",
};

static PyObject *set_serial(PyObject *m, PyObject *unused) { serial_after_fork = 1; Py_RETURN_NONE; }

/* empty(shape, typenum) -> array: an output array as the dispatcher allocates it (the Python path's). */
static PyObject *empty(PyObject *m, PyObject *args) {
    PyObject *shape;
    int type;
    if (!PyArg_ParseTuple(args, "O!i", &PyTuple_Type, &shape, &type)) return NULL;
    int nd = (int)PyTuple_GET_SIZE(shape);
    npy_intp dims[EXPRC_MAX_DIMS];
    if (nd > EXPRC_MAX_DIMS) { PyErr_SetString(PyExc_ValueError, "too many dimensions"); return NULL; }
    for (int d = 0; d < nd; d++) {
        dims[d] = (npy_intp)PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, d));
        if (dims[d] < 0) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative dimension"); return NULL; }
    }
    return new_output(nd, dims, type);
}

/* pool_info() -> (bytes kept, blocks kept, reuses so far, cap). */
static PyObject *pool_info(PyObject *m, PyObject *unused) {
    pthread_mutex_lock(&pool_lock);
    int blocks = 0;
    for (int i = 0; i < EXPRC_POOL_SLOTS; i++) blocks += pool[i].p != NULL;
    Py_ssize_t kept = (Py_ssize_t)pool_bytes, cap = (Py_ssize_t)pool_limit;
    unsigned long long reused = pool_reused;
    pthread_mutex_unlock(&pool_lock);
    /* (built after unlocking: an allocation may collect garbage, and a freed array locks the pool) */
    return Py_BuildValue("(niKn)", kept, blocks, reused, cap);
}

/* pool_release() -> None: give every kept block back to the C library. */
static PyObject *pool_release(PyObject *m, PyObject *unused) {
    pthread_mutex_lock(&pool_lock);
    pool_shrink(0);
    pthread_mutex_unlock(&pool_lock);
    Py_RETURN_NONE;
}

/* set_pool_cap(bytes) -> None: keep at most this many bytes (0: no pool); frees what no longer fits. */
static PyObject *set_pool_cap(PyObject *m, PyObject *args) {
    Py_ssize_t cap;
    if (!PyArg_ParseTuple(args, "n", &cap)) return NULL;
    if (cap < 0) { PyErr_SetString(PyExc_ValueError, "the pool's cap must be >= 0"); return NULL; }
    pthread_mutex_lock(&pool_lock);
    pool_limit = (size_t)cap;
    pool_shrink(pool_limit);
    pthread_mutex_unlock(&pool_lock);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_serial", set_serial, METH_NOARGS, "Run kernels on one thread (after fork)."},
    {"empty", empty, METH_VARARGS, "An output array, from the pool of large blocks where it is large."},
    {"pool_info", pool_info, METH_NOARGS, "(bytes kept, blocks kept, reuses, cap) of the pool of large blocks."},
    {"pool_release", pool_release, METH_NOARGS, "Free every block the pool keeps."},
    {"set_pool_cap", set_pool_cap, METH_VARARGS, "Keep at most this many bytes in the pool (0: none)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "exprc_dispatch", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit_exprc_dispatch(void) {
    import_array();
    s_value = PyUnicode_InternFromString("value");
    s_spare = PyUnicode_InternFromString("spare");
    s_acquire = PyUnicode_InternFromString("acquire");
    s_release = PyUnicode_InternFromString("release");
    if (!s_value || !s_spare || !s_acquire || !s_release) return NULL;
    if (PyType_Ready(&DispatcherType) < 0) return NULL;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0 && (size_t)pages * (size_t)page / 16 < pool_limit)
        pool_limit = (size_t)pages * (size_t)page / 16;  /* (a small machine keeps less) */
    pool_capsule = PyCapsule_New(&pool_handler, "mem_handler", NULL);
    if (!pool_capsule) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&DispatcherType);
    if (PyModule_AddObject(m, "Dispatcher", (PyObject *)&DispatcherType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
