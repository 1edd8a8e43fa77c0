// turbomind_adapter.cpp — tpprof engine adapter for LMDeploy TurboMind 0.5.x (LlamaTritonModel), the
// C++ engine driven from one process: rank 0 loads a converted workspace and runs every tensor-parallel
// GPU of its host with one thread per GPU, as TurboMind expects (TPPROF_TOPOLOGY_ONE_PROCESS); the
// other ranks create nothing and only observe their GPU.
//
// Built against the headers of lmdeploy v0.5.2 and not run here: see README.md ("What was verified").
//
// Per sample: one model instance per GPU (TurboMind's unit of concurrency, as lmdeploy's own Python
// front end creates one per concurrent request), a batch-of-one forward() on each GPU's thread, and a
// stream callback on GPU 0's instance. The callback reads the instance's shared output buffer, which
// holds every token so far: when TurboMind's output thread lags, one callback carries several new
// tokens, and each is counted (tpprof::Update carries them all; the glue calls on_token per token).
// The final tokens and the error, if any, come from forward()'s return on GPU 0's thread.
//
// Exact length: min_length = max_new_tokens (TurboMind masks the end id until then) and the end id in
// bad_words_list (lmdeploy's own ignore_eos does that); request_output_len = max_new_tokens.
//
// Options (flat JSON):
//   workspace             the converted model: <workspace>/triton_models/weights/config.ini (required)
//   cache_max_entry_count KV cache: a fraction of free GPU memory (< 1) or a number of blocks (>= 1);
//                         overrides config.ini
//   session_len           overrides config.ini (prompt + generated tokens must fit)
//   vocab_size            checked against config.ini's (tpprof draws random prompts below it)
//   response_timeout_s    no token for this long is an error (default 600)
#include "tpprof_adapter.hpp"

#include "src/turbomind/triton_backend/llama/LlamaTritonModel.h"
#include "src/turbomind/triton_backend/llama/LlamaTritonModelInstance.h"
#include "src/turbomind/triton_backend/transformer_triton_backend.hpp"

#include <cuda_runtime.h>

#include <condition_variable>
#include <deque>
#include <fstream>
#include <sstream>

#ifndef TPPROF_TURBOMIND_VERIFIED
#define TPPROF_TURBOMIND_VERIFIED "compiled against headers of lmdeploy v0.5.2; not run on real hardware"
#endif

namespace {

// The tensor map forward() takes and returns (TurboMind has a TensorMap type of its own).
using TritonMap = std::unordered_map<std::string, triton::Tensor>;

// ---- the workspace's config.ini ----------------------------------------------------------------

struct WorkspaceConfig {
    std::string weights_dir;
    std::string text;  // config.ini as read, with any overrides applied
    int tp = 0;
    int session_len = 0;
    int vocab = 0;
    int end_id = -1;
    std::string weight_type;
};

std::string trim(std::string s) {
    size_t a = s.find_first_not_of(" \t\r");
    size_t b = s.find_last_not_of(" \t\r");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

// Reads [llama] of config.ini; `overrides` replace (or add) keys in that section.
WorkspaceConfig read_config(std::string const& workspace, std::vector<std::pair<std::string, std::string>> const& overrides) {
    WorkspaceConfig c;
    c.weights_dir = workspace + "/triton_models/weights";
    std::string path = c.weights_dir + "/config.ini";
    std::ifstream f(path);
    if (!f) {
        throw tpprof::invalid("cannot read " + path + ": \"workspace\" must be a workspace converted by `lmdeploy convert` " +
                              "(it holds triton_models/weights/config.ini)");
    }
    std::ostringstream out;
    std::string line, section;
    std::map<std::string, std::string> llama;
    std::vector<bool> used(overrides.size(), false);
    auto flush_overrides = [&] {
        if (section != "llama") return;
        for (size_t i = 0; i < overrides.size(); i++) {
            if (!used[i]) out << overrides[i].first << " = " << overrides[i].second << "\n";
            used[i] = true;
            llama[overrides[i].first] = overrides[i].second;
        }
    };
    while (std::getline(f, line)) {
        std::string t = trim(line);
        if (!t.empty() && t.front() == '[' && t.back() == ']') {
            flush_overrides();
            section = t.substr(1, t.size() - 2);
            out << line << "\n";
            continue;
        }
        size_t eq = t.find('=');
        if (section == "llama" && eq != std::string::npos && t[0] != '#' && t[0] != ';') {
            std::string key = trim(t.substr(0, eq));
            bool replaced = false;
            for (size_t i = 0; i < overrides.size(); i++) {
                if (overrides[i].first == key) {
                    out << key << " = " << overrides[i].second << "\n";
                    used[i] = replaced = true;
                }
            }
            llama[key] = replaced ? std::string() : trim(t.substr(eq + 1));
            for (auto const& o : overrides) {
                if (o.first == key) llama[key] = o.second;
            }
            if (replaced) continue;
        }
        out << line << "\n";
    }
    flush_overrides();
    c.text = out.str();
    auto integer = [&](char const* key, bool required) -> int {
        auto it = llama.find(key);
        if (it == llama.end()) {
            if (required) throw tpprof::invalid(path + " has no `" + key + "` in [llama]: is it a TurboMind 0.5 workspace?");
            return -1;
        }
        try {
            return std::stoi(it->second);
        } catch (std::exception const&) {
            throw tpprof::invalid(path + ": `" + key + "` is not a number (" + it->second + ")");
        }
    };
    c.tp = integer("tensor_para_size", true);
    c.session_len = integer("session_len", true);
    c.vocab = integer("vocab_size", true);
    c.end_id = integer("end_id", false);
    c.weight_type = llama.count("weight_type") ? llama["weight_type"] : "fp16";
    return c;
}

// ---- one sample's request: inputs, one instance per GPU, forward threads -------------------------

struct Slot;

// What the forward threads and the stream callback share with the backend; kept alive by every
// thread that uses it, so a thread that outlives a failed generate() never touches freed memory.
struct Hub {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<tpprof::Update> updates;
    int running_threads = 0;

    void push(tpprof::Update u) {
        {
            std::lock_guard<std::mutex> lk(mu);
            updates.push_back(std::move(u));
        }
        cv.notify_all();
    }
};

struct Slot {
    uint64_t id = 0;          // CORRID of the session
    uint32_t max_new = 0;
    uint32_t prompt_len = 0;
    uint32_t sent = 0;        // tokens already reported
    int32_t last = -1;        // the last token reported
    bool final_sent = false;
    int end_id = -1;
    // Input storage (the tensors point into it).
    std::vector<int32_t> input_ids;
    int32_t input_len = 0;
    uint32_t request_output_len = 0;
    uint32_t top_k = 1;
    float top_p = 1.0f, temperature = 1.0f, repetition_penalty = 1.0f;
    int32_t step = 0, start = 1, end = 1, stop = 0;
    int32_t min_length = 0;
    std::vector<int32_t> bad_words;  // [1, 2, n]: ids, then end offsets
    std::shared_ptr<TritonMap> inputs;
    std::vector<std::unique_ptr<AbstractTransformerModelInstance>> instances;  // one per GPU
};

// Reads the new tokens of slot s from an output map (output_ids [1, 1, session_len] on the host,
// prompt first; sequence_length [1, 1] = prompt + generated). Caller holds the hub's lock.
std::vector<int32_t> new_tokens(Slot& s, TritonMap const& out) {
    auto seq = out.find("sequence_length");
    auto ids = out.find("output_ids");
    if (seq == out.end() || ids == out.end() || seq->second.data == nullptr || ids->second.data == nullptr) return {};
    uint32_t total = *static_cast<uint32_t const*>(seq->second.data);
    uint32_t generated = total > s.prompt_len ? total - s.prompt_len : 0;
    std::vector<int32_t> toks;
    auto const* data = static_cast<int32_t const*>(ids->second.data);
    for (uint32_t i = s.sent; i < generated; i++) toks.push_back(data[s.prompt_len + i]);
    if (generated > s.sent) {
        s.sent = generated;
        s.last = toks.back();
    }
    return toks;
}

class TurboMindEngine;

class TurboMindBatch final : public tpprof::Backend {
public:
    TurboMindBatch(TurboMindEngine& e) : engine_(e), hub_(std::make_shared<Hub>()) {}
    uint64_t enqueue(tpprof::Submission const& sub) override;
    std::vector<tpprof::Update> await_updates(std::chrono::milliseconds timeout) override {
        std::unique_lock<std::mutex> lk(hub_->mu);
        hub_->cv.wait_for(lk, timeout, [this] { return !hub_->updates.empty(); });
        std::vector<tpprof::Update> out(std::make_move_iterator(hub_->updates.begin()),
                                        std::make_move_iterator(hub_->updates.end()));
        hub_->updates.clear();
        return out;
    }
    void cancel(uint64_t id) noexcept override;
    void finish() noexcept override;

private:
    TurboMindEngine& engine_;
    std::shared_ptr<Hub> hub_;
    std::vector<std::shared_ptr<Slot>> slots_;
};

class TurboMindEngine final : public tpprof::Engine {
public:
    TurboMindEngine(tpprof_init const& init, tpprof::Options const& o) {
        rank_ = init.rank;
        if (init.rank != 0) return;  // ONE_PROCESS: the other ranks only observe their GPU
        std::string ws = o.str("workspace", "");
        if (ws.empty()) {
            throw tpprof::invalid("engine option \"workspace\" is required: the directory `lmdeploy convert` wrote " +
                                  std::string("(holding triton_models/weights/config.ini)"));
        }
        std::vector<std::pair<std::string, std::string>> overrides;
        if (o.has("cache_max_entry_count")) {
            overrides.push_back({"cache_max_entry_count", tpprof::Options::shortest(o.number("cache_max_entry_count", 0.8, 0.01, 1e9))});
        }
        if (o.has("session_len")) {
            overrides.push_back({"session_len", std::to_string(o.integer("session_len", 0, 1, 1 << 24))});
        }
        cfg_ = read_config(ws, overrides);
        if (o.has("vocab_size") && o.integer("vocab_size", 0, 1, 1 << 30) != cfg_.vocab) {
            throw tpprof::invalid("engine option \"vocab_size\" " + std::to_string(o.integer("vocab_size", 0, 1, 1 << 30)) +
                                  " differs from the workspace's " + std::to_string(cfg_.vocab) + ": drop it or correct it");
        }
        limits_.response_timeout_s = o.number("response_timeout_s", limits_.response_timeout_s, 0.001, 1e6);
        // The GPUs: TurboMind numbers them device_id_start .. device_id_start + tp - 1.
        if (init.n_devices < static_cast<size_t>(cfg_.tp)) {
            throw tpprof::invalid("the workspace has tensor_para_size " + std::to_string(cfg_.tp) + " but rank 0 sees " +
                                  std::to_string(init.n_devices) + " GPU(s) of its host: run mpirun -n " +
                                  std::to_string(cfg_.tp) + " on one host (one rank per GPU)");
        }
        for (int i = 0; i < cfg_.tp; i++) {
            if (init.devices[i] != init.devices[0] + i) {
                throw tpprof::invalid("TurboMind drives consecutive CUDA devices, but the ranks' GPUs are not: set "
                                      "CUDA_VISIBLE_DEVICES so that ranks 0.." + std::to_string(cfg_.tp - 1) +
                                      " get devices 0.." + std::to_string(cfg_.tp - 1));
            }
            devices_.push_back(init.devices[i]);
        }
        model_ = make_model();
        nccl_ = model_->createNcclParams(/*node_id=*/0, /*device_id_start=*/devices_[0], /*multi_node=*/false);
        // Weights: one thread per GPU, as TurboMind expects.
        run_per_gpu([this](int i) { model_->createSharedWeights(devices_[i], i); });
    }

    ~TurboMindEngine() override {
        // A forward thread still running (a generate() that hit its timeout) uses the model: leaking
        // it is the only safe choice; the process is about to report the error and exit.
        if (stuck_) {
            (void)new std::shared_ptr<AbstractTransformerModel>(std::move(model_));
            (void)new decltype(pool_)(std::move(pool_));
        }
    }

    tpprof_topology topology() const override { return TPPROF_TOPOLOGY_ONE_PROCESS; }

    void generate(tpprof::GenerateCall const& call) override {
        if (rank_ != 0) throw tpprof::runtime("generate() is only called on rank 0 (ONE_PROCESS topology)");
        if (stuck_) throw tpprof::runtime("an earlier generate() left TurboMind requests running; restart the process");
        for (size_t s = 0; s < call.n; s++) {
            if (call.prompts[s].len + call.max_new_tokens > static_cast<size_t>(cfg_.session_len)) {
                throw tpprof::invalid("sample " + std::to_string(s) + ": " + std::to_string(call.prompts[s].len) + " prompt + " +
                                      std::to_string(call.max_new_tokens) + " generated tokens exceed session_len " +
                                      std::to_string(cfg_.session_len) + ": raise the engine option \"session_len\"");
            }
        }
        TurboMindBatch batch(*this);
        tpprof::drive(batch, call, limits_);
    }

    // Runs f(i) for every GPU i on its own thread, rethrowing the first exception.
    template <class F>
    void run_per_gpu(F f) {
        std::vector<std::thread> threads;
        std::vector<std::exception_ptr> errors(devices_.size());
        for (size_t i = 0; i < devices_.size(); i++) {
            threads.emplace_back([&, i] {
                try {
                    check(cudaSetDevice(devices_[i]), "cudaSetDevice");
                    f(static_cast<int>(i));
                } catch (...) {
                    errors[i] = std::current_exception();
                }
            });
        }
        for (auto& t : threads) t.join();
        for (auto& e : errors) {
            if (e) std::rethrow_exception(e);
        }
    }

    static void check(cudaError_t rc, char const* what) {
        if (rc != cudaSuccess) throw tpprof::runtime(std::string(what) + " failed: " + cudaGetErrorString(rc));
    }

    // One instance per GPU for a new request, from a pool kept across generate() calls.
    std::vector<std::unique_ptr<AbstractTransformerModelInstance>> take_instances() {
        std::lock_guard<std::mutex> lk(pool_mu_);
        if (!pool_.empty()) {
            auto v = std::move(pool_.back());
            pool_.pop_back();
            return v;
        }
        std::vector<std::unique_ptr<AbstractTransformerModelInstance>> v(devices_.size());
        run_per_gpu([&](int i) { v[i] = model_->createModelInstance(devices_[i], i, /*stream=*/nullptr, nccl_); });
        return v;
    }

    void give_back(std::vector<std::unique_ptr<AbstractTransformerModelInstance>> v) {
        std::lock_guard<std::mutex> lk(pool_mu_);
        pool_.push_back(std::move(v));
    }

    uint64_t next_id() { return next_id_.fetch_add(1); }
    WorkspaceConfig const& config() const { return cfg_; }
    std::vector<int> const& devices() const { return devices_; }
    AbstractTransformerModel& model() { return *model_; }
    void mark_stuck() { stuck_ = true; }

private:
    std::shared_ptr<AbstractTransformerModel> make_model() {
        std::string const& wt = cfg_.weight_type;
        size_t tp = static_cast<size_t>(cfg_.tp);
        if (wt == "fp16" || wt == "half" || wt == "int4") {
            return std::make_shared<LlamaTritonModel<half>>(tp, 1, 0, cfg_.weights_dir, cfg_.text);
        }
#ifdef ENABLE_BF16
        if (wt == "bf16") return std::make_shared<LlamaTritonModel<__nv_bfloat16>>(tp, 1, 0, cfg_.weights_dir, cfg_.text);
#endif
        throw tpprof::unsupported("weight_type `" + wt + "` of the workspace is not supported by this adapter build " +
                                  "(fp16, int4, and bf16 when built with ENABLE_BF16)");
    }

    int rank_ = 0;
    WorkspaceConfig cfg_;
    std::vector<int> devices_;
    std::shared_ptr<AbstractTransformerModel> model_;
    std::pair<std::vector<ft::NcclParam>, std::vector<ft::NcclParam>> nccl_;
    tpprof::DriveLimits limits_;
    std::mutex pool_mu_;
    std::vector<std::vector<std::unique_ptr<AbstractTransformerModelInstance>>> pool_;
    std::atomic<uint64_t> next_id_{1};
    bool stuck_ = false;
};

template <class T>
triton::Tensor host_tensor(triton::DataType type, std::vector<size_t> shape, T const* data) {
    return triton::Tensor{triton::MEMORY_CPU, type, std::move(shape), data};
}

uint64_t TurboMindBatch::enqueue(tpprof::Submission const& sub) {
    WorkspaceConfig const& cfg = engine_.config();
    for (size_t i = 0; i < sub.len; i++) {
        if (sub.tokens[i] < 0 || sub.tokens[i] >= cfg.vocab) {
            throw tpprof::invalid("sample " + std::to_string(sub.sample) + " token " + std::to_string(i) + " = " +
                                  std::to_string(sub.tokens[i]) + " is outside the model's vocabulary [0, " +
                                  std::to_string(cfg.vocab) + "): pass --vocab-size " + std::to_string(cfg.vocab));
        }
    }
    auto s = std::make_shared<Slot>();
    s->id = engine_.next_id();
    s->max_new = sub.max_new_tokens;
    s->prompt_len = static_cast<uint32_t>(sub.len);
    s->end_id = cfg.end_id;
    s->input_ids.assign(sub.tokens, sub.tokens + sub.len);
    s->input_len = static_cast<int32_t>(sub.len);
    s->request_output_len = sub.max_new_tokens;
    s->inputs = std::make_shared<TritonMap>();
    TritonMap& in = *s->inputs;
    in.emplace("input_ids", host_tensor(triton::TYPE_INT32, {1, sub.len}, s->input_ids.data()));
    in.emplace("input_lengths", host_tensor(triton::TYPE_INT32, {1}, &s->input_len));
    in.emplace("request_output_len", host_tensor(triton::TYPE_UINT32, {1}, &s->request_output_len));
    in.emplace("runtime_top_k", host_tensor(triton::TYPE_UINT32, {1}, &s->top_k));
    in.emplace("runtime_top_p", host_tensor(triton::TYPE_FP32, {1}, &s->top_p));
    in.emplace("temperature", host_tensor(triton::TYPE_FP32, {1}, &s->temperature));
    in.emplace("repetition_penalty", host_tensor(triton::TYPE_FP32, {1}, &s->repetition_penalty));
    in.emplace("step", host_tensor(triton::TYPE_INT32, {1}, &s->step));
    in.emplace("START", host_tensor(triton::TYPE_INT32, {1}, &s->start));
    in.emplace("END", host_tensor(triton::TYPE_INT32, {1}, &s->end));
    in.emplace("STOP", host_tensor(triton::TYPE_INT32, {1}, &s->stop));
    in.emplace("CORRID", host_tensor(triton::TYPE_UINT64, {1}, &s->id));
    if (sub.exact_length) {
        s->min_length = static_cast<int32_t>(sub.max_new_tokens);
        in.emplace("min_length", host_tensor(triton::TYPE_INT32, {1}, &s->min_length));
        if (cfg.end_id >= 0) {
            s->bad_words = {cfg.end_id, 1};  // [1, 2, 1]: the id, then its end offset
            in.emplace("bad_words_list", host_tensor(triton::TYPE_INT32, {1, 2, 1}, s->bad_words.data()));
        }
    }
    s->instances = engine_.take_instances();
    std::weak_ptr<Slot> weak = s;
    std::shared_ptr<Hub> hub = hub_;
    s->instances[0]->registerCallback(
        [hub, weak](std::shared_ptr<TritonMap> out, void*) {
            auto slot = weak.lock();
            if (!slot || !out) return;
            tpprof::Update u;
            {
                std::lock_guard<std::mutex> lk(hub->mu);
                if (slot->final_sent) return;
                u.tokens = new_tokens(*slot, *out);
            }
            if (u.tokens.empty()) return;
            u.id = slot->id;
            hub->push(std::move(u));
        },
        nullptr);
    slots_.push_back(s);

    // One thread per GPU runs forward() for this request; GPU 0's reports the end.
    std::shared_ptr<ft::AbstractInstanceComm> comm(engine_.model().createInstanceComm(static_cast<int>(s->instances.size())));
    std::vector<int> const& devs = engine_.devices();
    {
        std::lock_guard<std::mutex> lk(hub_->mu);
        hub_->running_threads += static_cast<int>(devs.size());
    }
    for (size_t g = 0; g < devs.size(); g++) {
        std::thread([hub, s, comm, g, dev = devs[g]] {
            tpprof::Update u;
            u.id = s->id;
            u.final = true;
            try {
                if (cudaSetDevice(dev) != cudaSuccess) throw std::runtime_error("cudaSetDevice failed");
                auto out = s->instances[g]->forward(s->inputs, comm.get());
                if (g == 0) {
                    auto err = out ? out->find("error_message") : TritonMap::iterator();
                    if (!out) {
                        u.error = true;
                        u.message = "TurboMind forward() returned no outputs";
                    } else if (err != out->end()) {
                        u.error = true;
                        u.message = "TurboMind request failed";
                        try {
                            std::rethrow_exception(*static_cast<std::exception_ptr const*>(err->second.data));
                        } catch (std::exception const& e) {
                            u.message += std::string(": error code(s)") + e.what();
                        } catch (...) {
                        }
                    } else {
                        std::lock_guard<std::mutex> lk(hub->mu);
                        u.tokens = new_tokens(*s, *out);
                        s->final_sent = true;
                        if (s->sent >= s->max_new) {
                            u.reason = TPPROF_FINISH_LENGTH;
                        } else if (s->sent > 0 && s->end_id >= 0 && s->last == s->end_id) {
                            u.reason = TPPROF_FINISH_EOS;
                        } else {
                            u.reason = TPPROF_FINISH_STOP;
                        }
                    }
                }
            } catch (std::exception const& e) {
                u.error = true;
                u.message = std::string("TurboMind forward() on GPU ") + std::to_string(dev) + " threw: " + e.what();
            }
            if (g == 0 || u.error) hub->push(std::move(u));
            {
                std::lock_guard<std::mutex> lk(hub->mu);
                hub->running_threads--;
            }
            hub->cv.notify_all();
        }).detach();
    }
    return s->id;
}

// TurboMind 0.5 stops a session with a request of its own: STOP=1 for the same CORRID, on a fresh
// instance per GPU, with no tokens.
void TurboMindBatch::cancel(uint64_t id) noexcept {
    try {
        auto s = std::make_shared<Slot>();
        s->id = id;
        s->start = 0;
        s->end = 1;
        s->stop = 1;
        s->inputs = std::make_shared<TritonMap>();
        s->inputs->emplace("input_ids", host_tensor(triton::TYPE_INT32, {1, 0}, s->input_ids.data()));
        s->inputs->emplace("input_lengths", host_tensor(triton::TYPE_INT32, {1}, &s->input_len));
        s->inputs->emplace("request_output_len", host_tensor(triton::TYPE_UINT32, {1}, &s->request_output_len));
        s->inputs->emplace("START", host_tensor(triton::TYPE_INT32, {1}, &s->start));
        s->inputs->emplace("END", host_tensor(triton::TYPE_INT32, {1}, &s->end));
        s->inputs->emplace("STOP", host_tensor(triton::TYPE_INT32, {1}, &s->stop));
        s->inputs->emplace("CORRID", host_tensor(triton::TYPE_UINT64, {1}, &s->id));
        s->instances = engine_.take_instances();
        std::shared_ptr<ft::AbstractInstanceComm> comm(engine_.model().createInstanceComm(static_cast<int>(s->instances.size())));
        std::shared_ptr<Hub> hub = hub_;
        std::vector<int> const& devs = engine_.devices();
        {
            std::lock_guard<std::mutex> lk(hub->mu);
            hub->running_threads += static_cast<int>(devs.size());
        }
        for (size_t g = 0; g < devs.size(); g++) {
            std::thread([hub, s, comm, g, dev = devs[g]] {
                try {
                    cudaSetDevice(dev);
                    s->instances[g]->forward(s->inputs, comm.get());
                } catch (...) {
                }
                {
                    std::lock_guard<std::mutex> lk(hub->mu);
                    hub->running_threads--;
                }
                hub->cv.notify_all();
            }).detach();
        }
        slots_.push_back(s);
    } catch (...) {
    }
}

// Waits for every forward thread; instances go back to the pool. Threads still running after the
// response timeout mark the engine stuck (its destructor then leaks the model instead of freeing
// memory those threads use).
void TurboMindBatch::finish() noexcept {
    std::unique_lock<std::mutex> lk(hub_->mu);
    bool done = hub_->cv.wait_for(lk, std::chrono::seconds(30), [this] { return hub_->running_threads == 0; });
    lk.unlock();
    if (!done) {
        engine_.mark_stuck();
        return;
    }
    for (auto& s : slots_) {
        s->instances[0]->unRegisterCallback();
        engine_.give_back(std::move(s->instances));
    }
    slots_.clear();
}

std::unique_ptr<tpprof::Engine> create(tpprof_init const& init, tpprof::Options const& o) {
    o.reject_unknown({"workspace", "cache_max_entry_count", "session_len", "vocab_size", "response_timeout_s"});
    return std::make_unique<TurboMindEngine>(init, o);
}

}  // namespace

TPPROF_DEFINE_ADAPTER("turbomind",
                      "{\"name\":\"turbomind\",\"version\":\"lmdeploy 0.5.x (LlamaTritonModel)\","
                      "\"verified\":\"" TPPROF_TURBOMIND_VERIFIED "\","
                      "\"topology\":\"one_process\",\"exact_length\":\"min_length + end id in bad_words_list\","
                      "\"memory\":\"TurboMind 0.5 reports none itself: use the observers' GPU figures\"}",
                      create)
