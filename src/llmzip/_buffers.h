/* Argument buffers of the compiled modules (_quantized.c, _online.c): numpy arrays taken through
 * the buffer protocol, checked for item size and count, released together. */
#ifndef LLMZIP_BUFFERS_H
#define LLMZIP_BUFFERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    Py_buffer views[40];
    int count;
} Buffers;

static void release(Buffers *buffers) {
    for (int i = 0; i < buffers->count; i++) PyBuffer_Release(&buffers->views[i]);
    buffers->count = 0;
}

/* A C-contiguous buffer of exactly `items` items of `itemsize` bytes (any count when items < 0). */
static void *take(Buffers *buffers, PyObject *object, Py_ssize_t itemsize, Py_ssize_t items, int writable,
                  const char *name) {
    Py_buffer *view = &buffers->views[buffers->count];
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    buffers->count++;
    if (view->itemsize != itemsize || (items >= 0 && view->len != items * itemsize)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes, got %zd bytes of %zd-byte items", name,
                     items, itemsize, view->len, view->itemsize);
        return NULL;
    }
    return view->buf;
}

#endif
