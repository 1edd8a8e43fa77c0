// mock_executor.cpp — a fake asynchronous executor behind the common adapter glue, so the tests
// exercise exactly the code (tpprof_adapter.hpp) that the TensorRT-LLM and TurboMind adapters use.
//
// The fake works like an in-flight-batching executor: enqueue() queues a request and returns an id
// at once; a worker thread admits queued requests (prefill: prefill_us_per_token per prompt token,
// then the first token), then runs decode iterations of token_us in which every running request
// gains one token. New tokens are delivered in responses of up to `burst` tokens (several tokens in
// one response, as a streaming engine does when its client lags), through await_updates().
//
// Options (a flat JSON object; unknown keys are an error):
//   topology            "all_ranks" (default) | "one_process"
//   vocab_size          token ids in [0, vocab_size)                          (default 32000)
//   prefill_us_per_token, token_us   scripted delays                          (default 0)
//   burst               tokens per response                                    (default 1)
//   empty_final         1: the final flag comes in a separate response without tokens
//   eos_at_step         with exact_length == 0, every sample ends with EOS at this step
//   clip_tokens         the executor silently stops every sample after this many tokens with a
//                       LENGTH reason (TensorRT-LLM clips to the engine's max_seq_len like that)
//   extra_tokens        the executor produces this many tokens beyond max_new_tokens
//   error_rank, error_at_token   the response at that step carries an error (every sample)
//   stall_rank, stall_at_token   the executor stops responding at that step (a hang)
//   enqueue_fail_sample enqueue() throws for this sample index
//   fail_create_rank    create() fails on this rank
//   response_timeout_s, cancel_grace_s   the glue's limits (DriveLimits)
#include "tpprof_adapter.hpp"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <mutex>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

struct Script {
    bool one_process = false;
    int64_t vocab = 32000;
    double prefill_us_per_token = 0, token_us = 0;
    int64_t burst = 1;
    bool empty_final = false;
    int64_t eos_at_step = -1, clip_tokens = -1, extra_tokens = 0;
    int64_t error_at_token = -1, stall_at_token = -1, enqueue_fail_sample = -1;
    bool error_here = false, stall_here = false;
};

struct Req {
    uint64_t id;
    uint32_t sample;
    size_t prompt_len;
    uint32_t limit;  // tokens this request will produce
    bool exact;
    bool admitted = false, cancelled = false;
    uint32_t produced = 0;
    std::vector<int32_t> unsent;
};

// The fake executor: a worker thread, a request list and a response queue.
class FakeExecutor final : public tpprof::Backend {
public:
    explicit FakeExecutor(Script const& s) : s_(s), worker_([this] { work(); }) {}

    ~FakeExecutor() override {
        {
            std::lock_guard<std::mutex> lk(mu_);
            quit_ = true;
        }
        work_cv_.notify_all();
        worker_.join();
    }

    uint64_t enqueue(tpprof::Submission const& sub) override {
        if (static_cast<int64_t>(sub.sample) == s_.enqueue_fail_sample) {
            throw tpprof::runtime("injected enqueue failure for sample " + std::to_string(sub.sample));
        }
        for (size_t i = 0; i < sub.len; i++) {
            if (sub.tokens[i] < 0 || sub.tokens[i] >= s_.vocab) {
                throw tpprof::invalid("sample " + std::to_string(sub.sample) + " token " + std::to_string(i) + " = " +
                                      std::to_string(sub.tokens[i]) + " outside [0, " + std::to_string(s_.vocab) + ")");
            }
        }
        std::lock_guard<std::mutex> lk(mu_);
        Req r;
        r.id = next_id_;
        next_id_ += 7;  // ids are not sample indices
        r.sample = sub.sample;
        r.prompt_len = sub.len;
        r.limit = sub.max_new_tokens + static_cast<uint32_t>(s_.extra_tokens);
        if (s_.clip_tokens >= 1) r.limit = std::min<uint32_t>(r.limit, static_cast<uint32_t>(s_.clip_tokens));
        r.exact = sub.exact_length;
        reqs_.push_back(r);
        work_cv_.notify_all();
        return r.id;
    }

    std::vector<tpprof::Update> await_updates(std::chrono::milliseconds timeout) override {
        std::unique_lock<std::mutex> lk(mu_);
        resp_cv_.wait_for(lk, timeout, [this] { return !responses_.empty(); });
        std::vector<tpprof::Update> out(std::make_move_iterator(responses_.begin()),
                                        std::make_move_iterator(responses_.end()));
        responses_.clear();
        return out;
    }

    void cancel(uint64_t id) noexcept override {
        std::lock_guard<std::mutex> lk(mu_);
        for (Req& r : reqs_) {
            if (r.id == id) r.cancelled = true;
        }
        work_cv_.notify_all();
    }

private:
    int32_t token_of(Req const& r, uint32_t step) const {
        return static_cast<int32_t>((static_cast<int64_t>(r.sample) * 31 + static_cast<int64_t>(step) * 7 + 1) % s_.vocab);
    }

    static void wait_us(double us) {
        if (us <= 0) return;
        auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(us));
        std::this_thread::sleep_until(until);
    }

    // Adds one token to r; queues a response when a burst is full or r is done. Holds mu_.
    void produce_locked(Req& r, bool& finished) {
        uint32_t step = r.produced++;
        r.unsent.push_back(token_of(r, step));
        tpprof_finish_reason reason = TPPROF_FINISH_NONE;
        if (!r.exact && s_.eos_at_step >= 0 && static_cast<int64_t>(step) == s_.eos_at_step) {
            reason = TPPROF_FINISH_EOS;
        } else if (r.produced == r.limit) {
            reason = TPPROF_FINISH_LENGTH;
        }
        finished = reason != TPPROF_FINISH_NONE;
        if (finished || static_cast<int64_t>(r.unsent.size()) >= s_.burst) {
            tpprof::Update u;
            u.id = r.id;
            u.tokens = std::move(r.unsent);
            r.unsent.clear();
            u.final = finished && !s_.empty_final;
            u.reason = u.final ? reason : TPPROF_FINISH_NONE;
            responses_.push_back(std::move(u));
            if (finished && s_.empty_final) {
                tpprof::Update f;
                f.id = r.id;
                f.final = true;
                f.reason = reason;
                responses_.push_back(std::move(f));
            }
            resp_cv_.notify_all();
        }
    }

    void respond_error_locked(Req const& r, std::string const& msg) {
        tpprof::Update u;
        u.id = r.id;
        u.final = true;
        u.error = true;
        u.message = msg;
        responses_.push_back(std::move(u));
        resp_cv_.notify_all();
    }

    void work() {
        std::unique_lock<std::mutex> lk(mu_);
        for (;;) {
            work_cv_.wait(lk, [this] { return quit_ || !reqs_.empty(); });
            if (quit_) return;
            // Cancelled requests end with an error-free final update, like an executor's cancel.
            for (auto it = reqs_.begin(); it != reqs_.end();) {
                if (it->cancelled) {
                    tpprof::Update u;
                    u.id = it->id;
                    u.final = true;
                    u.reason = TPPROF_FINISH_ERROR;
                    responses_.push_back(std::move(u));
                    resp_cv_.notify_all();
                    it = reqs_.erase(it);
                } else {
                    ++it;
                }
            }
            // Prefill of newly queued requests, one at a time, then their first token.
            for (auto it = reqs_.begin(); it != reqs_.end();) {
                if (it->admitted) {
                    ++it;
                    continue;
                }
                it->admitted = true;
                double us = s_.prefill_us_per_token * static_cast<double>(it->prompt_len);
                lk.unlock();
                wait_us(us);
                lk.lock();
                if (quit_) return;
                bool finished = false;
                produce_locked(*it, finished);
                it = finished ? reqs_.erase(it) : std::next(it);
            }
            if (reqs_.empty()) continue;
            // One decode iteration: every running request gains one token.
            uint32_t step = reqs_.front().produced;
            if (s_.stall_here && static_cast<int64_t>(step) >= s_.stall_at_token) {
                work_cv_.wait(lk, [this] { return quit_; });  // hang until destroyed
                return;
            }
            lk.unlock();
            wait_us(s_.token_us);
            lk.lock();
            if (quit_) return;
            for (auto it = reqs_.begin(); it != reqs_.end();) {
                if (s_.error_here && static_cast<int64_t>(it->produced) == s_.error_at_token) {
                    respond_error_locked(*it, "injected executor error at token " + std::to_string(it->produced));
                    it = reqs_.erase(it);
                    continue;
                }
                bool finished = false;
                if (!it->cancelled) produce_locked(*it, finished);
                it = finished ? reqs_.erase(it) : std::next(it);
            }
        }
    }

    Script s_;
    std::mutex mu_;
    std::condition_variable work_cv_, resp_cv_;
    std::list<Req> reqs_;
    std::deque<tpprof::Update> responses_;
    uint64_t next_id_ = 1000;
    bool quit_ = false;
    std::thread worker_;  // last: starts after everything it uses exists
};

class MockExecutorEngine final : public tpprof::Engine {
public:
    MockExecutorEngine(Script const& s, tpprof::DriveLimits const& limits) : script_(s), limits_(limits) {}

    tpprof_topology topology() const override {
        return script_.one_process ? TPPROF_TOPOLOGY_ONE_PROCESS : TPPROF_TOPOLOGY_ALL_RANKS;
    }

    void generate(tpprof::GenerateCall const& call) override {
        FakeExecutor ex(script_);  // a fresh executor per call: nothing left over from a failed one
        tpprof::drive(ex, call, limits_);
    }

private:
    Script script_;
    tpprof::DriveLimits limits_;
};

std::unique_ptr<tpprof::Engine> create(tpprof_init const& init, tpprof::Options const& o) {
    o.reject_unknown({"topology", "vocab_size", "prefill_us_per_token", "token_us", "burst", "empty_final", "eos_at_step",
                      "clip_tokens", "extra_tokens", "error_rank", "error_at_token", "stall_rank", "stall_at_token",
                      "enqueue_fail_sample", "fail_create_rank", "response_timeout_s", "cancel_grace_s"});
    if (o.integer("fail_create_rank", -1, -1, 1 << 20) == init.rank) {
        throw tpprof::runtime("injected failure in create() on rank " + std::to_string(init.rank));
    }
    Script s;
    std::string topo = o.str("topology", "all_ranks");
    if (topo != "all_ranks" && topo != "one_process") {
        throw tpprof::invalid("engine option \"topology\" must be \"all_ranks\" or \"one_process\" (got \"" + topo + "\")");
    }
    s.one_process = topo == "one_process";
    s.vocab = o.integer("vocab_size", 32000, 1, 1 << 30);
    s.prefill_us_per_token = o.number("prefill_us_per_token", 0, 0, 1e9);
    s.token_us = o.number("token_us", 0, 0, 1e9);
    s.burst = o.integer("burst", 1, 1, 1 << 20);
    s.empty_final = o.boolean("empty_final", false);
    s.eos_at_step = o.integer("eos_at_step", -1, -1, 1 << 30);
    s.clip_tokens = o.integer("clip_tokens", -1, -1, 1 << 30);
    s.extra_tokens = o.integer("extra_tokens", 0, 0, 1 << 20);
    s.error_at_token = o.integer("error_at_token", -1, -1, 1 << 30);
    s.error_here = o.integer("error_rank", 0, -1, 1 << 20) == init.rank;
    s.stall_at_token = o.integer("stall_at_token", -1, -1, 1 << 30);
    s.stall_here = s.stall_at_token >= 0 && o.integer("stall_rank", 0, -1, 1 << 20) == init.rank;
    s.enqueue_fail_sample = o.integer("enqueue_fail_sample", -1, -1, 1 << 30);
    tpprof::DriveLimits limits;
    limits.response_timeout_s = o.number("response_timeout_s", limits.response_timeout_s, 0.001, 1e6);
    limits.cancel_grace_s = o.number("cancel_grace_s", limits.cancel_grace_s, 0, 1e6);
    return std::make_unique<MockExecutorEngine>(s, limits);
}

}  // namespace

TPPROF_DEFINE_ADAPTER("mock_executor",
                      "{\"name\":\"mock_executor\",\"version\":\"1\",\"description\":\"fake asynchronous executor on "
                      "the common C++ adapter glue (tests)\"}",
                      create)
