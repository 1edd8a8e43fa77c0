/*
 * tpprof_engine.h — the engine plugin ABI of tpprof.
 *
 * An engine adapter is a shared library exporting the functions declared below. tpprof loads it at
 * run time (dlopen), calls tpprof_abi_version() first and refuses the library unless it returns
 * TPPROF_ABI_VERSION, then resolves every other symbol before calling any of them.
 *
 * Rules for adapters:
 *  - Never exit(), abort() or throw across this boundary: return a tpprof_status and write a
 *    one-line, NUL-terminated message into err (at most errlen bytes including the NUL).
 *  - The on_token callback may be called from any thread; it is cheap and thread-safe. tpprof takes
 *    its timestamp on entry, so call it as soon as a token is known on the host.
 *  - All pointers passed in are owned by tpprof and valid only for the duration of the call.
 *
 * Version history:
 *   1 — first version.
 */
#ifndef TPPROF_ENGINE_H
#define TPPROF_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TPPROF_ABI_VERSION 1u

/* Return codes of every fallible call. */
typedef enum tpprof_status {
    TPPROF_OK = 0,
    TPPROF_ERR_INVALID_ARGUMENT = 1, /* bad options, prompt out of range, unsupported request   */
    TPPROF_ERR_OUT_OF_MEMORY = 2,    /* host or device allocation failed                         */
    TPPROF_ERR_RUNTIME = 3,          /* anything else that went wrong while running              */
    TPPROF_ERR_UNSUPPORTED = 4       /* the engine cannot do what was asked (e.g. exact length)  */
} tpprof_status;

/* Who runs the engine. */
typedef enum tpprof_topology {
    /* Every rank creates the engine and takes part in generate(); rank 0's tokens are the result
     * (TensorRT-LLM leader mode, tpprof's built-in engines). */
    TPPROF_TOPOLOGY_ALL_RANKS = 0,
    /* Rank 0 drives every local GPU from one process (TurboMind). tpprof calls create() on every
     * rank, but generate() on rank 0 only; the other ranks only observe their GPU. */
    TPPROF_TOPOLOGY_ONE_PROCESS = 1
} tpprof_topology;

/* Why a sample stopped; passed with the last token of the sample, TPPROF_FINISH_NONE before. */
typedef enum tpprof_finish_reason {
    TPPROF_FINISH_NONE = 0,
    TPPROF_FINISH_LENGTH = 1, /* reached max_new_tokens                        */
    TPPROF_FINISH_EOS = 2,    /* produced the end-of-sequence token            */
    TPPROF_FINISH_STOP = 3,   /* a stop word / engine-side stop criterion      */
    TPPROF_FINISH_ERROR = 4   /* the engine gave up on this sample             */
} tpprof_finish_reason;

/* What create() gets. */
typedef struct tpprof_init {
    int32_t rank;              /* MPI rank in tpprof's world                                      */
    int32_t world_size;        /* number of ranks = tensor-parallel degree                         */
    int32_t local_rank;        /* rank among the ranks of this host                                */
    int32_t local_world_size;  /* ranks on this host                                               */
    const int32_t *devices;    /* CUDA ordinals: devices[0] is this rank's GPU, followed by the GPUs */
    size_t n_devices;          /*   of the other ranks on this host in local-rank order (a ONE_PROCESS
                                *   engine drives them all from rank 0). n_devices = 0: no GPU.      */
    const char *options_json;  /* engine options as a JSON object (never NULL, at least "{}")      */
    const uint8_t *rendezvous; /* bytes rank 0 created and tpprof broadcast over MPI (may be NULL) */
    size_t rendezvous_len;
} tpprof_init;

/* One sample: a 1-D INT32 token array. */
typedef struct tpprof_prompt {
    const int32_t *tokens;
    size_t len;
} tpprof_prompt;

/* Called once per generated token. step counts from 0 (step 0 is the first token, after prefill). */
typedef void (*tpprof_on_token_fn)(void *user, uint32_t sample, uint32_t step, int32_t token,
                                   int32_t finish_reason);

/* What the engine knows of its own memory, in bytes; TPPROF_UNKNOWN where it cannot tell. */
#define TPPROF_UNKNOWN UINT64_MAX
typedef struct tpprof_memory_stats {
    uint64_t weights_bytes;
    uint64_t kv_cache_bytes;
    uint64_t workspace_bytes;  /* activations, scratch, graphs            */
    uint64_t comm_bytes;       /* communicator buffers (NCCL, MPI)         */
    uint64_t host_bytes;       /* host-side allocations the engine made    */
} tpprof_memory_stats;

typedef struct tpprof_engine tpprof_engine;

/* Must return TPPROF_ABI_VERSION of the header the adapter was compiled with. */
uint32_t tpprof_abi_version(void);

/* A JSON object describing the engine ({"name": ..., "version": ..., ...}); static storage. */
const char *tpprof_engine_info(void);

int32_t tpprof_create(const tpprof_init *init, tpprof_engine **out, char *err, size_t errlen);

/* A tpprof_topology value. */
int32_t tpprof_get_topology(const tpprof_engine *engine);

/* Generate for n samples. exact_length != 0: every sample gets exactly max_new_tokens tokens
 * (EOS and stop words ignored); return TPPROF_ERR_UNSUPPORTED if the engine cannot promise that. */
int32_t tpprof_generate(tpprof_engine *engine, const tpprof_prompt *prompts, size_t n,
                        uint32_t max_new_tokens, int32_t exact_length, tpprof_on_token_fn on_token,
                        void *user, char *err, size_t errlen);

int32_t tpprof_memory(const tpprof_engine *engine, tpprof_memory_stats *stats, char *err,
                      size_t errlen);

void tpprof_destroy(tpprof_engine *engine);

#ifdef __cplusplus
}
#endif

#endif /* TPPROF_ENGINE_H */
