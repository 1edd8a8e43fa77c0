/* libcublas.so.12 stand-in for lmdeploy 0.18's _turbomind on a machine that has only CUDA 13.
 *
 * _turbomind imports exactly six cuBLAS symbols, all of the stable v2 API, versioned
 * `libcublas.so.12` (checked with `nm -D --undefined-only`): cublasCreate_v2, cublasDestroy_v2,
 * cublasSetStream_v2, cublasSetWorkspace_v2, cublasGetMathMode and cublasGemmEx. TurboMind calls
 * them from one candidate of its GEMM registry (src/turbomind/kernels/gemm/cublas.cu); its own
 * kernels do the rest. This library defines those six under the version node `libcublas.so.12`
 * (cublas12-shim.map) and forwards each to the same function of the CUDA 13 cuBLAS
 * (libcublas.so.13, found by the dynamic loader), whose signatures and enum values for these calls
 * are unchanged. The real cuBLAS 12 is ~320 MB even compressed (launch/turbomind-bundle.sh
 * --real-cublas brings it instead).
 *
 * The stand-in never aborts: when libcublas.so.13 or a symbol is missing it says so once on stderr
 * and returns CUBLAS_STATUS_NOT_INITIALIZED (1), which TurboMind reports as an error.
 *
 * Build: gcc -shared -fPIC -O2 -Wl,-soname,libcublas.so.12 -Wl,--version-script=cublas12-shim.map \
 *            -o libcublas.so.12 cublas12-shim.c -ldl
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>

typedef int status_t; /* cublasStatus_t */
typedef void *handle_t; /* cublasHandle_t */
enum { NOT_INITIALIZED = 1 };

static void *target(const char *name) {
    static void *lib;
    static int warned;
    if (!lib) lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    void *f = lib ? dlsym(lib, name) : NULL;
    if (!f && !warned) {
        warned = 1;
        fprintf(stderr, "tpprof cublas12 shim: %s: %s (the CUDA 13 cuBLAS must be on the loader's path)\n",
                name, lib ? "not in libcublas.so.13" : dlerror());
    }
    return f;
}

/* One forwarding function per symbol: the pointer is looked up once (a benign race: every thread
 * stores the same value). */
#define FORWARD(name, params, args)                                   \
    status_t name params {                                            \
        static status_t(*f) params;                                   \
        if (!f) f = (status_t(*) params)target(#name);                \
        return f ? f args : NOT_INITIALIZED;                          \
    }

FORWARD(cublasCreate_v2, (handle_t * h), (h))
FORWARD(cublasDestroy_v2, (handle_t h), (h))
FORWARD(cublasSetStream_v2, (handle_t h, void *stream), (h, stream))
FORWARD(cublasSetWorkspace_v2, (handle_t h, void *ws, size_t bytes), (h, ws, bytes))
FORWARD(cublasGetMathMode, (handle_t h, int *mode), (h, mode))
FORWARD(cublasGemmEx,
        (handle_t h, int transa, int transb, int m, int n, int k, const void *alpha, const void *A, int Atype,
         int lda, const void *B, int Btype, int ldb, const void *beta, void *C, int Ctype, int ldc,
         int computeType, int algo),
        (h, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, computeType, algo))
