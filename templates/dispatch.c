/* exprc call dispatcher: a small CPython extension built once per Python/NumPy
 * version (and cached).  It owns the common call path of compiled functions:
 * check the argument arrays against the signature, find the plan for their
 * shapes, allocate the outputs, fill the pointer table and call the generated
 * library with the GIL released.  Anything unusual (other dtypes, views,
 * non-contiguous arrays, a shape without a plan) returns None so that the
 * Python path, which raises the precise errors, takes over. */
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

static void plan_clear(plan_t *p) {
    PyMem_Free(p->in_shapes); PyMem_Free(p->out_slot); PyMem_Free(p->out_ndim);
    PyMem_Free(p->out_type); PyMem_Free(p->out_shapes);
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

/* add_plan(in_shapes, P_addr, ptrs_addr, out_specs, keep) -> bool
 * out_specs: tuple of (slot, shape tuple, typenum). */
static PyObject *Dispatcher_add_plan(Dispatcher *self, PyObject *args) {
    PyObject *shapes, *outs, *keep;
    unsigned long long P, ptrs;
    if (!PyArg_ParseTuple(args, "O!KKO!O", &PyTuple_Type, &shapes, &P, &ptrs, &PyTuple_Type, &outs, &keep))
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
    if (!p->in_shapes || !p->out_slot || !p->out_ndim || !p->out_type || !p->out_shapes) {
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
    if (PyErr_Occurred()) { plan_clear(p); return NULL; }
    p->P = (const int64_t *)(uintptr_t)P;
    p->ptrs = (char **)(uintptr_t)ptrs;
    p->nout = nout;
    Py_INCREF(keep);
    p->keep = keep;
    p->used = 1;
    Py_RETURN_TRUE;
}

static PyObject *Dispatcher_call(Dispatcher *self, PyObject *args, PyObject *kw) {
    if (kw && PyDict_GET_SIZE(kw)) Py_RETURN_NONE;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n != self->nin) Py_RETURN_NONE;
    PyArrayObject *arr[EXPRC_MAX_ARGS];
    for (int i = 0; i < self->nin; i++) {
        PyObject *o = PyTuple_GET_ITEM(args, i);
        if (Py_TYPE(o) != &PyArray_Type) Py_RETURN_NONE;
        PyArrayObject *a = (PyArrayObject *)o;
        if (PyArray_TYPE(a) != self->in_type[i] || PyArray_NDIM(a) != self->in_ndim[i] ||
            !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || PyArray_ISBYTESWAPPED(a))
            Py_RETURN_NONE;
        arr[i] = a;
    }
    plan_t *p = NULL;
    for (int k = 0; k < EXPRC_MAX_PLANS && !p; k++) {
        plan_t *q = &self->plans[k];
        if (!q->used || q->busy) continue;
        int off = 0, ok = 1;
        for (int i = 0; i < self->nin && ok; i++) {
            npy_intp *dims = PyArray_DIMS(arr[i]);
            for (int d = 0; d < self->in_ndim[i]; d++) if (dims[d] != q->in_shapes[off + d]) { ok = 0; break; }
            off += self->in_ndim[i];
        }
        if (ok) p = q;
    }
    if (!p) Py_RETURN_NONE;
    char *ptrs[EXPRC_MAX_SLOTS];
    memcpy(ptrs, p->ptrs, sizeof(char *) * self->nslots);
    for (int i = 0; i < self->nin; i++) ptrs[i] = PyArray_BYTES(arr[i]);
    PyObject *outs[EXPRC_MAX_SLOTS];
    int off = 0;
    for (int j = 0; j < p->nout; j++) {
        outs[j] = PyArray_EMPTY(p->out_ndim[j], p->out_shapes + off, p->out_type[j], 0);
        off += p->out_ndim[j];
        if (!outs[j]) { for (int t = 0; t < j; t++) Py_DECREF(outs[t]); return NULL; }
        ptrs[p->out_slot[j]] = PyArray_BYTES((PyArrayObject *)outs[j]);
    }
    /* The plan's scratch buffers are ours until the call returns. */
    p->busy = 1;
    int nthreads = serial_after_fork ? 1 : self->nthreads;
    Py_BEGIN_ALLOW_THREADS
    self->run(ptrs, p->P, 0, self->nkernels, nthreads);
    Py_END_ALLOW_THREADS
    p->busy = 0;
    if (self->single && p->nout == 1) return outs[0];
    PyObject *list = PyList_New(p->nout);
    if (!list) { for (int j = 0; j < p->nout; j++) Py_DECREF(outs[j]); return NULL; }
    for (int j = 0; j < p->nout; j++) PyList_SET_ITEM(list, j, outs[j]);
    return list;
}

static PyObject *Dispatcher_clear(Dispatcher *self, PyObject *unused) {
    for (int i = 0; i < EXPRC_MAX_PLANS; i++) if (!self->plans[i].busy) plan_clear(&self->plans[i]);
    Py_RETURN_NONE;
}

static PyMethodDef Dispatcher_methods[] = {
    {"add_plan", (PyCFunction)Dispatcher_add_plan, METH_VARARGS, "Register a plan for one input signature."},
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

static PyMethodDef module_methods[] = {
    {"set_serial", set_serial, METH_NOARGS, "Run kernels on one thread (after fork)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "exprc_dispatch", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit_exprc_dispatch(void) {
    import_array();
    if (PyType_Ready(&DispatcherType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&DispatcherType);
    if (PyModule_AddObject(m, "Dispatcher", (PyObject *)&DispatcherType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
