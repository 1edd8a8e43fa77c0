// trtllm_adapter.cpp — tpprof engine adapter for TensorRT-LLM's C++ Executor API in leader mode.
//
// Every rank constructs the Executor from the same engine directory (TensorRT-LLM's leader mode: one
// MPI rank per GPU, participant 0 = world rank 0 is the leader). Only the leader enqueues and awaits
// responses; the other ranks take part through the Executor's own threads and MPI traffic, and their
// destroy() calls shutdown(), which returns when the leader's shutdown releases them.
//
// To tpprof this is TPPROF_TOPOLOGY_ONE_PROCESS: generate() runs on rank 0 only and the other ranks
// observe their GPU. (ALL_RANKS would make tpprof expect every rank to report the tokens, which a
// non-leader never sees in leader mode.)
//
// Per sample: a Request with the prompt's VecTokens, max tokens = max_new_tokens, streaming on, no end
// id and no stop words (the batch manager then never stops early: exact length), greedy sampling;
// the common glue's response thread awaits responses, counts every token of a response and maps
// Result::finishReasons; an error response carries getErrorMsg().
//
// KV cache: block reuse off by default (a benchmark that repeats prompts must not fake a fast TTFT),
// freeGpuMemoryFraction configurable. Engine memory: the largest IterationStats::gpuMemUsage seen,
// reported as workspace bytes; it counts TensorRT-LLM's own buffer allocations (KV cache pool and
// runtime buffers), not TensorRT's engine weights and activations, cuBLAS, NCCL or the CUDA context:
// partial by construction, the observers' GPU figures are the whole picture.
//
// API versions (the C++ Executor exists in 0.9 .. 1.2; it was removed from TensorRT-LLM's main branch
// in 2026 together with the TensorRT engine backend):
//   TPPROF_TRTLLM_API=11   the 0.10/0.11 API: KvCacheConfig has no setters (positional constructor),
//                          SamplingConfig::setMinLength, no Result::finishReasons (the reason is then
//                          inferred: LENGTH at max tokens, EOS if the last token is the end id)
//   TPPROF_TRTLLM_API=100  the 1.x API (default): KvCacheConfig setters, setMinTokens, finishReasons
// TPPROF_TRTLLM_HAS_FINISH_REASONS overrides the finishReasons choice (it appeared between the two).
//
// Options (flat JSON):
//   engine_dir                the directory trtllm-build wrote (required)
//   free_gpu_memory_fraction  of the free memory after loading, for the KV cache (default 0.9)
//   enable_block_reuse        KV cache block reuse (default false)
//   end_id                    the model's end-of-sequence id, used only without exact length
//   check_mpi                 refuse to run when MPI is not initialised with MPI_THREAD_MULTIPLE or two
//                             different MPI libraries are loaded (default true)
//   vocab_size                accepted for tpprof (random prompts are drawn below it)
//   response_timeout_s        no response for this long is an error (default 600)
#include "tpprof_adapter.hpp"

#include "tensorrt_llm/executor/executor.h"
#include "tensorrt_llm/plugins/api/tllmPlugin.h"

// The MPI C API only (the deprecated C++ bindings are not needed).
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <dlfcn.h>
#include <link.h>
#include <limits.h>
#include <stdlib.h>

#include <filesystem>
#include <optional>
#include <set>

#ifndef TPPROF_TRTLLM_API
#define TPPROF_TRTLLM_API 100
#endif
#ifndef TPPROF_TRTLLM_HAS_FINISH_REASONS
#define TPPROF_TRTLLM_HAS_FINISH_REASONS (TPPROF_TRTLLM_API >= 100)
#endif
#ifndef TPPROF_TRTLLM_VERIFIED
#if TPPROF_TRTLLM_API >= 100
#define TPPROF_TRTLLM_VERIFIED "compiled (-c) against real TensorRT-LLM 1.x-era executor headers (executor.h 2164cc8d, types.h a98a9061, main branch, not a release tag); not linked, not run"
#else
#define TPPROF_TRTLLM_VERIFIED "compiled (-c) against real TensorRT-LLM executor headers of 2024-07-16 (2d234357, the eve of v0.11.0); not linked, not run"
#endif
#endif

#define TPPROF_STR2(x) #x
#define TPPROF_STR(x) TPPROF_STR2(x)

namespace tle = tensorrt_llm::executor;

namespace {

// ---- MPI: the conditions leader mode needs --------------------------------------------------------

// Paths of the loaded shared objects whose name starts with libmpi (libmpi.so.40, libmpi_cxx, ...
// are one library family; only libmpi.so* itself is collected).
int collect_mpi(struct dl_phdr_info* info, size_t, void* data) {
    auto* found = static_cast<std::set<std::string>*>(data);
    if (info->dlpi_name == nullptr || info->dlpi_name[0] == '\0') return 0;
    std::string path = info->dlpi_name;
    std::string base = path.substr(path.find_last_of('/') + 1);
    if (base.rfind("libmpi.so", 0) == 0) {
        char real[PATH_MAX];
        found->insert(realpath(path.c_str(), real) != nullptr ? std::string(real) : path);
    }
    return 0;
}

void check_mpi() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        throw tpprof::runtime("MPI is not initialised: run tpprof under mpirun (tpprof initialises MPI before loading adapters)");
    }
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided != MPI_THREAD_MULTIPLE) {
        throw tpprof::runtime("MPI runs at thread level " + std::to_string(provided) +
                              ", TensorRT-LLM's executor threads need MPI_THREAD_MULTIPLE: use an MPI built with thread support");
    }
    std::set<std::string> libs;
    dl_iterate_phdr(collect_mpi, &libs);
    if (libs.size() > 1) {
        std::string list;
        for (auto const& l : libs) list += (list.empty() ? "" : ", ") + l;
        throw tpprof::runtime("two MPI libraries are loaded (" + list + "): tpprof, this adapter and TensorRT-LLM must use the " +
                              "same MPI; rebuild tpprof against the MPI libtensorrt_llm.so was linked with, or pass " +
                              "\"check_mpi\": false at your own risk");
    }
}

// ---- the backend -----------------------------------------------------------------------------------

#if TPPROF_TRTLLM_HAS_FINISH_REASONS
tpprof_finish_reason map_reason(tle::FinishReason r) {
    switch (r) {
    case tle::FinishReason::kNOT_FINISHED: return TPPROF_FINISH_NONE;
    case tle::FinishReason::kEND_ID: return TPPROF_FINISH_EOS;
    case tle::FinishReason::kSTOP_WORDS: return TPPROF_FINISH_STOP;
    case tle::FinishReason::kLENGTH: return TPPROF_FINISH_LENGTH;
    default: return TPPROF_FINISH_ERROR;  // timed out, cancelled, and whatever later versions add
    }
}
#endif

struct Settings {
    std::string engine_dir;
    float free_gpu_memory_fraction = 0.9f;
    bool enable_block_reuse = false;
    std::optional<int32_t> end_id;
    bool check_mpi = true;
    tpprof::DriveLimits limits;
};

class ExecutorBackend final : public tpprof::Backend {
public:
    ExecutorBackend(tle::Executor& ex, Settings const& s, size_t& peak_gpu, size_t& peak_host)
        : ex_(ex), s_(s), peak_gpu_(peak_gpu), peak_host_(peak_host) {}

    uint64_t enqueue(tpprof::Submission const& sub) override {
        tle::VecTokens input(sub.tokens, sub.tokens + sub.len);
        tle::SamplingConfig sampling(1);  // beam width 1
        sampling.setTopK(1);              // greedy
        if (sub.exact_length) {
#if TPPROF_TRTLLM_API >= 100
            sampling.setMinTokens(static_cast<tle::SizeType32>(sub.max_new_tokens));
#else
            sampling.setMinLength(static_cast<tle::SizeType32>(sub.max_new_tokens));
#endif
        }
        tle::OutputConfig output;
        output.excludeInputFromOutput = true;
        // No end id with exact length: the batch manager's end id is then -1, which no token matches.
        std::optional<tle::SizeType32> end_id;
        if (!sub.exact_length && s_.end_id) end_id = *s_.end_id;
        tle::Request req(std::move(input), static_cast<tle::SizeType32>(sub.max_new_tokens), /*streaming=*/true, sampling,
                         output, end_id);
        tle::IdType id = ex_.enqueueRequest(req);
        return static_cast<uint64_t>(id);
    }

    std::vector<tpprof::Update> await_updates(std::chrono::milliseconds timeout) override {
        std::vector<tpprof::Update> out;
        for (auto const& resp : ex_.awaitResponses(timeout)) {
            tpprof::Update u;
            u.id = static_cast<uint64_t>(resp.getRequestId());
            if (resp.hasError()) {
                u.error = true;
                u.final = true;
                u.message = "TensorRT-LLM: " + std::string(resp.getErrorMsg());
                out.push_back(std::move(u));
                continue;
            }
            auto const& result = resp.getResult();
            if (!result.outputTokenIds.empty()) u.tokens = result.outputTokenIds[0];
            u.final = result.isFinal;
            if (u.final) {
#if TPPROF_TRTLLM_HAS_FINISH_REASONS
                u.reason = result.finishReasons.empty() ? TPPROF_FINISH_NONE : map_reason(result.finishReasons[0]);
#endif
                if (u.reason == TPPROF_FINISH_NONE && s_.end_id && !u.tokens.empty() && u.tokens.back() == *s_.end_id) {
                    u.reason = TPPROF_FINISH_EOS;
                }
                if (u.reason == TPPROF_FINISH_NONE) u.reason = TPPROF_FINISH_LENGTH;  // the only other way to end
            }
            out.push_back(std::move(u));
        }
        sample_memory();
        return out;
    }

    void cancel(uint64_t id) noexcept override {
        try {
            ex_.cancelRequest(static_cast<tle::IdType>(id));
        } catch (...) {
        }
    }

    void finish() noexcept override {
        try {
            sample_memory();
        } catch (...) {
        }
    }

private:
    // At most once a second: the largest gpuMemUsage of the iterations since the last call.
    void sample_memory() {
        auto now = std::chrono::steady_clock::now();
        if (now - last_stats_ < std::chrono::seconds(1)) return;
        last_stats_ = now;
        for (auto const& it : ex_.getLatestIterationStats()) {
            peak_gpu_ = std::max(peak_gpu_, static_cast<size_t>(it.gpuMemUsage));
            peak_host_ = std::max(peak_host_, static_cast<size_t>(it.cpuMemUsage + it.pinnedMemUsage));
        }
    }

    tle::Executor& ex_;
    Settings const& s_;
    size_t& peak_gpu_;
    size_t& peak_host_;
    std::chrono::steady_clock::time_point last_stats_{};
};

// ---- the engine ------------------------------------------------------------------------------------

class TrtLlmEngine final : public tpprof::Engine {
public:
    TrtLlmEngine(tpprof_init const& init, Settings s) : s_(std::move(s)), rank_(init.rank) {
        if (s_.check_mpi) check_mpi();
        if (!std::filesystem::is_directory(s_.engine_dir)) {
            throw tpprof::invalid("engine_dir " + s_.engine_dir + " is not a directory: pass the directory trtllm-build wrote");
        }
        if (!initTrtLlmPlugins(nullptr, "tensorrt_llm")) {
            throw tpprof::runtime("initTrtLlmPlugins failed: is libnvinfer_plugin_tensorrt_llm.so from the same TensorRT-LLM?");
        }
#if TPPROF_TRTLLM_API >= 100
        tle::KvCacheConfig kv;
        kv.setEnableBlockReuse(s_.enable_block_reuse);
        kv.setFreeGpuMemoryFraction(s_.free_gpu_memory_fraction);
#else
        tle::KvCacheConfig kv(s_.enable_block_reuse, std::nullopt, std::nullopt, std::nullopt, s_.free_gpu_memory_fraction);
#endif
        tle::ExecutorConfig cfg(/*maxBeamWidth=*/1);
        cfg.setKvCacheConfig(kv);
        // Leader mode over MPI is the default parallel configuration; said explicitly all the same.
        cfg.setParallelConfig(tle::ParallelConfig(tle::CommunicationType::kMPI, tle::CommunicationMode::kLEADER));
        ex_ = std::make_unique<tle::Executor>(std::filesystem::path(s_.engine_dir), tle::ModelType::kDECODER_ONLY, cfg);
        bool leader = ex_->canEnqueueRequests();
        if (leader != (rank_ == 0)) {
            throw tpprof::runtime("TensorRT-LLM's leader is not tpprof's rank 0 (this is rank " + std::to_string(rank_) +
                                  (leader ? ", the leader" : ", not the leader") + "): run one rank per GPU, world size = tp * pp");
        }
    }

    ~TrtLlmEngine() override {
        // The leader's shutdown releases the other ranks' shutdown(); destroy() runs on every rank.
        if (ex_) {
            try {
                ex_->shutdown();
            } catch (...) {
            }
        }
    }

    tpprof_topology topology() const override { return TPPROF_TOPOLOGY_ONE_PROCESS; }

    void generate(tpprof::GenerateCall const& call) override {
        if (rank_ != 0) throw tpprof::runtime("generate() runs on the leader (rank 0) only");
        if (!call.exact_length && !s_.end_id) {
            throw tpprof::unsupported("without exact length the adapter needs the model's end id: pass the engine option \"end_id\"");
        }
        ExecutorBackend backend(*ex_, s_, peak_gpu_, peak_host_);
        tpprof::drive(backend, call, s_.limits);
    }

    tpprof_memory_stats memory() const override {
        tpprof_memory_stats m = tpprof::Engine::memory();
        if (peak_gpu_ > 0) m.workspace_bytes = peak_gpu_;
        if (peak_host_ > 0) m.host_bytes = peak_host_;
        return m;
    }

private:
    Settings s_;
    int rank_;
    std::unique_ptr<tle::Executor> ex_;
    size_t peak_gpu_ = 0, peak_host_ = 0;
};

std::unique_ptr<tpprof::Engine> create(tpprof_init const& init, tpprof::Options const& o) {
    o.reject_unknown({"engine_dir", "free_gpu_memory_fraction", "enable_block_reuse", "end_id", "check_mpi", "vocab_size",
                      "response_timeout_s"});
    Settings s;
    s.engine_dir = o.str("engine_dir", "");
    if (s.engine_dir.empty()) {
        throw tpprof::invalid("engine option \"engine_dir\" is required: the directory trtllm-build wrote (config.json, rank*.engine)");
    }
    s.free_gpu_memory_fraction = static_cast<float>(o.number("free_gpu_memory_fraction", 0.9, 0.01, 0.99));
    s.enable_block_reuse = o.boolean("enable_block_reuse", false);
    if (o.has("end_id")) s.end_id = static_cast<int32_t>(o.integer("end_id", 0, 0, INT32_MAX));
    s.check_mpi = o.boolean("check_mpi", true);
    s.limits.response_timeout_s = o.number("response_timeout_s", s.limits.response_timeout_s, 0.001, 1e6);
    return std::make_unique<TrtLlmEngine>(init, std::move(s));
}

}  // namespace

TPPROF_DEFINE_ADAPTER("trtllm",
                      "{\"name\":\"trtllm\",\"version\":\"TensorRT-LLM C++ Executor, API " TPPROF_STR(TPPROF_TRTLLM_API) "\","
                      "\"verified\":\"" TPPROF_TRTLLM_VERIFIED "\","
                      "\"topology\":\"one_process: leader mode, rank 0 enqueues, the other ranks run TensorRT-LLM's "
                      "workers and observe their GPU\","
                      "\"exact_length\":\"no end id, no stop words\","
                      "\"memory\":\"workspace_bytes = peak IterationStats.gpuMemUsage: TensorRT-LLM buffers only (KV "
                      "cache pool, runtime buffers), not engine weights, activations, cuBLAS, NCCL or the CUDA context\"}",
                      create)
