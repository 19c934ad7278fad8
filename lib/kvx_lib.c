/* kvx_lib.c - the one translation unit of libkvx.so (`make lib`): every
   header's implementation, with RDMA and CUDA support when the Makefile
   found their headers (-DKVX_WITH_RDMA, -DKVX_WITH_CUDA; libibverbs and
   libcuda are still loaded at run time with dlopen, so the library links
   only -lpthread -lm -ldl).

   Built with -fvisibility=hidden: only the public API (every KVX_API
   function) is exported; the kvx__ helpers stay inside the library.
   Programs that link against it include the headers WITHOUT
   KVX_IMPLEMENTATION, where KVX_API is the plain `extern` of kvx.h. */
#if defined(__GNUC__) || defined(__clang__)
#define KVX_API __attribute__((visibility("default"))) extern
#else
#define KVX_API extern
#endif
#define KVX_IMPLEMENTATION
#include "../kvx.h"
#include "../kvx_boot.h"
#include "../kvx_file.h"
#include "../kvx_tcp.h"
#include "../kvx_rdma.h"
#include "../kvx_store.h"
#include "../kvx_cuda.h"
