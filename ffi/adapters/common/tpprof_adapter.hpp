// tpprof_adapter.hpp — the engine-independent half of a C++ adapter on ffi/tpprof_engine.h.
//
// An adapter for an asynchronous engine (TensorRT-LLM's Executor, TurboMind's stream callback, the
// test executor in ffi/adapters/mock_executor) is written as two small classes:
//
//   * a tpprof::Backend: enqueue(one sample) -> request id; await_updates(timeout) -> what arrived
//     since the last call (new tokens per request id, a final flag, a finish reason, or an error);
//     cancel(id). Nothing else: no token counting, no callbacks, no thread of its own required.
//   * a tpprof::Engine: topology(), generate() (usually one call to tpprof::drive()), memory().
//
// and TPPROF_DEFINE_ADAPTER(info_json, factory) then defines every C entry point of the ABI around
// them, so that no exception crosses the C boundary and every error becomes a status code plus a
// one-line message.
//
// tpprof::drive() is the part that every adapter would otherwise get subtly wrong, so it lives here
// once and is exercised by the tests through the mock executor:
//   * request bookkeeping: sample index <-> request id, including updates that arrive before
//     enqueue() has even returned the id;
//   * a dedicated response thread (started before the first enqueue, so the first token is never
//     held back by the submission loop) that calls on_token once per NEW token, counting each token
//     of an update that carries several, with per-sample steps;
//   * finish reasons: the max_new_tokens-th token always carries LENGTH (an engine may send its
//     final flag in a later, empty update); otherwise the last token of the final update carries the
//     engine's reason; a sample that ends short keeps its true reason, and tpprof reports it as short;
//   * the exact-length contract: more tokens than asked for, an update after the final one, or an
//     update for an id never enqueued are errors, never silently dropped or counted;
//   * errors: the first one wins (enqueue failure, an error update, an exception from the engine),
//     every unfinished request is cancelled, and generate() returns the first error's status and
//     message;
//   * never a hang: await_updates() is called with a short timeout; no update at all for
//     response_timeout_s while samples are unfinished is an error naming the option to raise, and
//     cancellation is waited for at most cancel_grace_s.
//
// C++17, header-only, standard library only. Include it from exactly one translation unit of an
// adapter (it defines struct tpprof_engine and, through the macro, the exported functions).

#ifndef TPPROF_ADAPTER_HPP
#define TPPROF_ADAPTER_HPP

#include "tpprof_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tpprof {

// ---- errors ----------------------------------------------------------------------------------

// An error with the ABI status it maps to. Adapters throw it; the C entry points catch it.
class Error : public std::runtime_error {
public:
    Error(tpprof_status status, std::string const& message) : std::runtime_error(message), status_(status) {}
    tpprof_status status() const noexcept { return status_; }

private:
    tpprof_status status_;
};

inline Error invalid(std::string const& m) { return Error(TPPROF_ERR_INVALID_ARGUMENT, m); }
inline Error runtime(std::string const& m) { return Error(TPPROF_ERR_RUNTIME, m); }
inline Error unsupported(std::string const& m) { return Error(TPPROF_ERR_UNSUPPORTED, m); }

// Writes msg into err as one NUL-terminated line (newlines and tabs become spaces), truncated to
// errlen bytes.
inline void write_error(char* err, size_t errlen, std::string const& msg) {
    if (err == nullptr || errlen == 0) return;
    size_t n = std::min(msg.size(), errlen - 1);
    for (size_t i = 0; i < n; i++) {
        char c = msg[i];
        err[i] = (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
    }
    err[n] = '\0';
}

// Runs f; maps every exception to a status code and a message prefixed with `who` (the adapter's
// name) unless the message already starts with it.
template <class F>
int32_t guarded(char const* who, char* err, size_t errlen, F&& f) noexcept {
    auto prefixed = [who](std::string const& m) {
        std::string w = std::string(who) + ":";
        return m.compare(0, w.size(), w) == 0 ? m : w + " " + m;
    };
    try {
        f();
        return TPPROF_OK;
    } catch (Error const& e) {
        write_error(err, errlen, prefixed(e.what()));
        return e.status();
    } catch (std::bad_alloc const&) {
        write_error(err, errlen, prefixed("out of host memory"));
        return TPPROF_ERR_OUT_OF_MEMORY;
    } catch (std::exception const& e) {
        write_error(err, errlen, prefixed(e.what()));
        return TPPROF_ERR_RUNTIME;
    } catch (...) {
        write_error(err, errlen, prefixed("unknown exception from the engine"));
        return TPPROF_ERR_RUNTIME;
    }
}

// ---- options: a flat JSON object --------------------------------------------------------------

// The engine options tpprof passes (--engine-options): a JSON object whose values are strings,
// numbers, booleans or null. Nested objects and arrays are refused with a message, and so is any key
// the adapter does not know (a typo must not silently fall back to a default).
class Options {
public:
    struct Value {
        enum Kind { kString, kNumber, kBool, kNull } kind = kNull;
        std::string str;
        double num = 0;
        bool boolean = false;
    };

    static Options parse(char const* json, std::string const& adapter) {
        Options o;
        o.adapter_ = adapter;
        Parser p{json != nullptr ? json : "{}", 0};
        p.ws();
        if (!p.eat('{')) p.fail("must be a JSON object, e.g. {\"key\": 1}");
        p.ws();
        if (p.eat('}')) return o.finish(p);
        for (;;) {
            p.ws();
            std::string key = p.string();
            p.ws();
            if (!p.eat(':')) p.fail("expected ':' after \"" + key + "\"");
            p.ws();
            Value v = p.value(key);
            if (o.values_.count(key) != 0) p.fail("key \"" + key + "\" given twice");
            o.values_[key] = v;
            p.ws();
            if (p.eat(',')) continue;
            if (p.eat('}')) break;
            p.fail("expected ',' or '}' after the value of \"" + key + "\"");
        }
        return o.finish(p);
    }

    bool has(std::string const& key) const { return values_.count(key) != 0; }

    // Every key must be one of `known`; the error lists them.
    void reject_unknown(std::initializer_list<char const*> known) const {
        for (auto const& kv : values_) {
            bool ok = false;
            for (char const* k : known) ok = ok || kv.first == k;
            if (!ok) {
                std::string list;
                for (char const* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
                throw invalid("unknown engine option \"" + kv.first + "\": this adapter knows " + list);
            }
        }
    }

    std::string str(std::string const& key, std::string const& dflt) const {
        auto it = values_.find(key);
        if (it == values_.end() || it->second.kind == Value::kNull) return dflt;
        if (it->second.kind != Value::kString) throw invalid("engine option \"" + key + "\" must be a string");
        return it->second.str;
    }

    double num(std::string const& key, double dflt) const {
        auto it = values_.find(key);
        if (it == values_.end() || it->second.kind == Value::kNull) return dflt;
        if (it->second.kind != Value::kNumber) throw invalid("engine option \"" + key + "\" must be a number");
        return it->second.num;
    }

    // A whole number within [lo, hi].
    int64_t integer(std::string const& key, int64_t dflt, int64_t lo, int64_t hi) const {
        if (!has(key)) return dflt;
        double d = num(key, static_cast<double>(dflt));
        if (d != std::floor(d) || d < static_cast<double>(lo) || d > static_cast<double>(hi)) {
            throw invalid("engine option \"" + key + "\" must be a whole number in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "] (got " + shortest(d) + ")");
        }
        return static_cast<int64_t>(d);
    }

    // A number within [lo, hi].
    double number(std::string const& key, double dflt, double lo, double hi) const {
        double d = num(key, dflt);
        if (!(d >= lo && d <= hi)) {
            throw invalid("engine option \"" + key + "\" must be in [" + shortest(lo) + ", " + shortest(hi) + "] (got " +
                          shortest(d) + ")");
        }
        return d;
    }

    bool boolean(std::string const& key, bool dflt) const {
        auto it = values_.find(key);
        if (it == values_.end() || it->second.kind == Value::kNull) return dflt;
        if (it->second.kind == Value::kBool) return it->second.boolean;
        if (it->second.kind == Value::kNumber && (it->second.num == 0 || it->second.num == 1)) return it->second.num != 0;
        throw invalid("engine option \"" + key + "\" must be true or false");
    }

    static std::string shortest(double d) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%g", d);
        return buf;
    }

private:
    struct Parser {
        char const* s;
        size_t i;

        [[noreturn]] void fail(std::string const& why) const {
            throw invalid("--engine-options " + why + " (at byte " + std::to_string(i) + ")");
        }
        void ws() {
            while (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') i++;
        }
        bool eat(char c) {
            if (s[i] != c) return false;
            i++;
            return true;
        }
        std::string string() {
            if (!eat('"')) fail("expected a quoted key");
            std::string out;
            for (;;) {
                char c = s[i];
                if (c == '\0') fail("unterminated string");
                i++;
                if (c == '"') return out;
                if (c != '\\') {
                    out += c;
                    continue;
                }
                char e = s[i++];
                switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                default: fail("unsupported escape in a string (\\u escapes are not supported here)");
                }
            }
        }
        Value value(std::string const& key) {
            Value v;
            char c = s[i];
            if (c == '"') {
                v.kind = Value::kString;
                v.str = string();
            } else if (c == '{' || c == '[') {
                fail("the value of \"" + key + "\" is an object or array; this adapter takes flat values only");
            } else if (std::strncmp(s + i, "true", 4) == 0) {
                v.kind = Value::kBool;
                v.boolean = true;
                i += 4;
            } else if (std::strncmp(s + i, "false", 5) == 0) {
                v.kind = Value::kBool;
                i += 5;
            } else if (std::strncmp(s + i, "null", 4) == 0) {
                i += 4;
            } else {
                char* end = nullptr;
                v.num = std::strtod(s + i, &end);
                if (end == s + i) fail("the value of \"" + key + "\" is not a string, number, boolean or null");
                v.kind = Value::kNumber;
                i = static_cast<size_t>(end - s);
            }
            return v;
        }
    };

    Options finish(Parser& p) {
        p.ws();
        if (p.s[p.i] != '\0') p.fail("has text after the closing '}'");
        return std::move(*this);
    }

    std::string adapter_;
    std::map<std::string, Value> values_;
};

// ---- the backend interface ---------------------------------------------------------------------

// One sample to submit.
struct Submission {
    uint32_t sample;
    int32_t const* tokens;
    size_t len;
    uint32_t max_new_tokens;
    bool exact_length;
};

// What the engine reported for one request since the previous update of that request.
struct Update {
    uint64_t id = 0;
    std::vector<int32_t> tokens;  // the NEW tokens only, in order
    bool final = false;           // no more updates follow for this id
    tpprof_finish_reason reason = TPPROF_FINISH_NONE;  // meaningful with final
    bool error = false;           // the engine gave up on this request; message says why
    std::string message;
};

class Backend {
public:
    virtual ~Backend() = default;
    // Submits one sample; returns the engine's id for it. Throws tpprof::Error (or anything) on
    // failure. Updates for the id may arrive (from await_updates) before this returns.
    virtual uint64_t enqueue(Submission const& s) = 0;
    // Called once after every sample was enqueued (an engine that runs a whole batch at once, like
    // TurboMind 0.5, starts here).
    virtual void start() {}
    // Returns what arrived, waiting at most `timeout` when nothing is ready; empty on timeout.
    // Called from tpprof::drive()'s response thread only.
    virtual std::vector<Update> await_updates(std::chrono::milliseconds timeout) = 0;
    // Best effort; the engine should still send a final update for the id.
    virtual void cancel(uint64_t id) noexcept = 0;
    // Called once when drive() ends, successful or not, after the response thread stopped.
    virtual void finish() noexcept {}
};

// ---- generate() orchestration ------------------------------------------------------------------

struct DriveLimits {
    // No update at all for this long while samples are unfinished is an error.
    double response_timeout_s = 600.0;
    // After an error, how long cancelled requests may take to report their final update.
    double cancel_grace_s = 5.0;
    // The option name to name in the timeout message.
    std::string response_timeout_option = "response_timeout_s";
};

// The arguments of tpprof_generate, minus the error buffer.
struct GenerateCall {
    tpprof_prompt const* prompts;
    size_t n;
    uint32_t max_new_tokens;
    bool exact_length;
    tpprof_on_token_fn on_token;
    void* user;
};

namespace detail {

class Driver {
public:
    Driver(Backend& b, GenerateCall const& c, DriveLimits const& l)
        : backend_(b), call_(c), limits_(l), count_(c.n, 0), done_(c.n, false), final_seen_(c.n, false), id_of_(c.n, 0),
          known_(c.n, false) {}

    void run() {
        unfinished_ = call_.n;
        if (unfinished_ == 0) return;
        last_update_ = Clock::now();
        std::thread responder([this] { respond(); });
        submit();
        {
            std::unique_lock<std::mutex> lk(mu_);
            done_cv_.wait(lk, [this] { return unfinished_ == 0 || !error_.empty(); });
        }
        if (has_error()) cancel_and_wait();
        stop_.store(true);
        responder.join();
        if (!error_.empty()) throw Error(error_status_, error_);
    }

private:
    using Clock = std::chrono::steady_clock;

    bool has_error() {
        std::lock_guard<std::mutex> lk(mu_);
        return !error_.empty();
    }

    // Records the first error and wakes generate(). Caller holds mu_.
    void fail_locked(tpprof_status status, std::string const& msg) {
        if (error_.empty()) {
            error_ = msg;
            error_status_ = status;
        }
        done_cv_.notify_all();
    }

    void fail(tpprof_status status, std::string const& msg) {
        std::lock_guard<std::mutex> lk(mu_);
        fail_locked(status, msg);
    }

    void submit() {
        for (size_t s = 0; s < call_.n; s++) {
            if (has_error()) return;
            tpprof_prompt const& p = call_.prompts[s];
            Submission sub{static_cast<uint32_t>(s), p.tokens, p.len, call_.max_new_tokens, call_.exact_length};
            uint64_t id;
            try {
                id = backend_.enqueue(sub);
            } catch (Error const& e) {
                fail(e.status(), "enqueue of sample " + std::to_string(s) + " failed: " + e.what());
                return;
            } catch (std::bad_alloc const&) {
                fail(TPPROF_ERR_OUT_OF_MEMORY, "enqueue of sample " + std::to_string(s) + " failed: out of host memory");
                return;
            } catch (std::exception const& e) {
                fail(TPPROF_ERR_RUNTIME, "enqueue of sample " + std::to_string(s) + " failed: " + e.what());
                return;
            }
            std::lock_guard<std::mutex> lk(mu_);
            if (sample_of_.count(id) != 0) {
                fail_locked(TPPROF_ERR_RUNTIME, "the engine returned request id " + std::to_string(id) + " twice");
                return;
            }
            sample_of_[id] = static_cast<uint32_t>(s);
            id_of_[s] = id;
            known_[s] = true;
            auto early = pending_.find(id);
            if (early != pending_.end()) {
                std::vector<Update> ups = std::move(early->second);
                pending_.erase(early);
                for (Update const& u : ups) dispatch_locked(static_cast<uint32_t>(s), u);
            }
        }
        try {
            backend_.start();
        } catch (std::exception const& e) {
            fail(TPPROF_ERR_RUNTIME, std::string("starting the batch failed: ") + e.what());
        }
    }

    // The response thread: awaits updates and turns them into on_token calls.
    void respond() {
        auto const tick = std::chrono::milliseconds(50);
        while (!stop_.load()) {
            std::vector<Update> ups;
            try {
                ups = backend_.await_updates(tick);
            } catch (Error const& e) {
                fail(e.status(), std::string("awaiting responses failed: ") + e.what());
                std::this_thread::sleep_for(tick);
                continue;
            } catch (std::exception const& e) {
                fail(TPPROF_ERR_RUNTIME, std::string("awaiting responses failed: ") + e.what());
                std::this_thread::sleep_for(tick);
                continue;
            }
            std::lock_guard<std::mutex> lk(mu_);
            auto now = Clock::now();
            if (!ups.empty()) last_update_ = now;
            for (Update const& u : ups) {
                auto it = sample_of_.find(u.id);
                if (it == sample_of_.end()) {
                    pending_[u.id].push_back(u);  // enqueue() has not returned this id yet
                } else {
                    dispatch_locked(it->second, u);
                }
            }
            double quiet = std::chrono::duration<double>(now - last_update_).count();
            if (unfinished_ > 0 && error_.empty() && quiet > limits_.response_timeout_s) {
                fail_locked(TPPROF_ERR_RUNTIME,
                            "no response from the engine for " + Options::shortest(limits_.response_timeout_s) + " s with " +
                                std::to_string(unfinished_) + " of " + std::to_string(call_.n) +
                                " samples unfinished; raise the engine option \"" + limits_.response_timeout_option +
                                "\" if the engine is only slow");
            }
            // Wakes generate() when done, and cancel_and_wait() when a cancelled request settled.
            if (!ups.empty() || unfinished_ == 0) done_cv_.notify_all();
        }
    }

    // One update of sample s: one on_token per new token. Caller holds mu_.
    void dispatch_locked(uint32_t s, Update const& u) {
        std::string const who = "sample " + std::to_string(s) + " (request " + std::to_string(u.id) + ")";
        if (final_seen_[s]) {
            if (!error_.empty()) return;  // late updates of a request cancelled after an error
            fail_locked(TPPROF_ERR_RUNTIME, "the engine sent an update for " + who + " after its final one");
            return;
        }
        if (u.error) {
            final_seen_[s] = true;
            done_locked(s);
            fail_locked(TPPROF_ERR_RUNTIME, who + ": " + (u.message.empty() ? "the engine reported an error" : u.message));
            return;
        }
        uint32_t const max_new = call_.max_new_tokens;
        for (size_t k = 0; k < u.tokens.size(); k++) {
            uint32_t step = count_[s];
            if (step >= max_new) {
                done_locked(s);
                final_seen_[s] = true;  // given up on: cancelled below, not waited for
                overrun_.push_back(u.id);
                fail_locked(TPPROF_ERR_RUNTIME, "the engine returned more than max_new_tokens = " + std::to_string(max_new) +
                                                    " tokens for " + who + ": its length limit is not the one requested");
                return;
            }
            int32_t reason = TPPROF_FINISH_NONE;
            if (step + 1 == max_new) {
                reason = TPPROF_FINISH_LENGTH;  // nothing can follow the max_new_tokens-th token
            } else if (u.final && k + 1 == u.tokens.size()) {
                reason = u.reason == TPPROF_FINISH_NONE ? TPPROF_FINISH_STOP : u.reason;
            }
            count_[s] = step + 1;
            call_.on_token(call_.user, s, step, u.tokens[k], reason);
        }
        // A sample is complete at its final update only: an engine that sends its final flag in a
        // later, empty update is waited for, and one that sends more than max_new_tokens tokens is
        // always caught. A final update without tokens after a short sample cannot put its reason on
        // a token already delivered; tpprof still reports the sample as short.
        if (u.final) {
            final_seen_[s] = true;
            done_locked(s);
        }
    }

    void done_locked(uint32_t s) {
        if (done_[s]) return;
        done_[s] = true;
        if (unfinished_ > 0) unfinished_--;
    }

    // After an error: cancel everything unfinished and give it cancel_grace_s to settle.
    void cancel_and_wait() {
        std::vector<uint64_t> ids;
        {
            std::lock_guard<std::mutex> lk(mu_);
            for (size_t s = 0; s < call_.n; s++) {
                if (known_[s] && !final_seen_[s]) ids.push_back(id_of_[s]);
            }
            ids.insert(ids.end(), overrun_.begin(), overrun_.end());
        }
        for (uint64_t id : ids) backend_.cancel(id);
        auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(limits_.cancel_grace_s));
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait_until(lk, deadline, [&] {
            for (size_t s = 0; s < call_.n; s++) {
                if (known_[s] && !final_seen_[s]) return false;
            }
            return true;
        });
    }

    Backend& backend_;
    GenerateCall call_;
    DriveLimits limits_;

    std::mutex mu_;
    std::condition_variable done_cv_;
    std::atomic<bool> stop_{false};
    std::vector<uint32_t> count_;
    std::vector<bool> done_;        // no longer counted as unfinished
    std::vector<bool> final_seen_;  // the engine's final (or error) update arrived
    std::vector<uint64_t> id_of_;
    std::vector<bool> known_;
    std::unordered_map<uint64_t, uint32_t> sample_of_;
    std::unordered_map<uint64_t, std::vector<Update>> pending_;
    std::vector<uint64_t> overrun_;  // requests that returned too many tokens
    size_t unfinished_ = 0;
    Clock::time_point last_update_;
    std::string error_;
    tpprof_status error_status_ = TPPROF_OK;
};

}  // namespace detail

// Runs one generate() call on a backend: see the top of this file. Throws tpprof::Error.
inline void drive(Backend& backend, GenerateCall const& call, DriveLimits const& limits) {
    struct Finish {
        Backend& b;
        ~Finish() { b.finish(); }
    } finish{backend};
    detail::Driver(backend, call, limits).run();
}

// Checks the arguments every adapter's generate() must check.
inline void check_generate_args(GenerateCall const& c) {
    if (c.on_token == nullptr) throw invalid("generate() needs an on_token callback");
    if (c.n > 0 && c.prompts == nullptr) throw invalid("generate() got n > 0 prompts but no prompt array");
    if (c.max_new_tokens == 0) throw invalid("generate() needs max_new_tokens > 0");
    for (size_t s = 0; s < c.n; s++) {
        if (c.prompts[s].len == 0 || c.prompts[s].tokens == nullptr) {
            throw invalid("sample " + std::to_string(s) + " has an empty prompt");
        }
    }
}

// ---- the engine and the C entry points -----------------------------------------------------------

class Engine {
public:
    virtual ~Engine() = default;
    virtual tpprof_topology topology() const = 0;
    virtual void generate(GenerateCall const& call) = 0;
    virtual tpprof_memory_stats memory() const {
        tpprof_memory_stats m;
        m.weights_bytes = m.kv_cache_bytes = m.workspace_bytes = m.comm_bytes = m.host_bytes = TPPROF_UNKNOWN;
        return m;
    }
};

}  // namespace tpprof

// The opaque handle of the ABI.
struct tpprof_engine {
    std::unique_ptr<tpprof::Engine> impl;
};

// Exported with default visibility even when the adapter is built with -fvisibility=hidden (which
// keeps its other symbols from clashing with the engine's libraries).
#define TPPROF_EXPORT extern "C" __attribute__((visibility("default")))

// Defines the ABI's exported functions. NAME is the adapter's name for messages (a string literal),
// INFO_JSON its tpprof_engine_info() string, FACTORY a callable
// std::unique_ptr<tpprof::Engine>(tpprof_init const&, tpprof::Options const&).
#define TPPROF_DEFINE_ADAPTER(NAME, INFO_JSON, FACTORY)                                                          \
    TPPROF_EXPORT uint32_t tpprof_abi_version(void) { return TPPROF_ABI_VERSION; }                                  \
    TPPROF_EXPORT const char* tpprof_engine_info(void) { return INFO_JSON; }                                        \
    TPPROF_EXPORT int32_t tpprof_create(const tpprof_init* init, tpprof_engine** out, char* err, size_t errlen) {  \
        return tpprof::guarded(NAME, err, errlen, [&] {                                                          \
            if (init == nullptr || out == nullptr) throw tpprof::invalid("create() got a NULL argument");        \
            tpprof::Options opts = tpprof::Options::parse(init->options_json, NAME);                             \
            auto e = std::make_unique<tpprof_engine>();                                                          \
            e->impl = (FACTORY)(*init, opts);                                                                    \
            *out = e.release();                                                                                  \
        });                                                                                                      \
    }                                                                                                            \
    TPPROF_EXPORT int32_t tpprof_get_topology(const tpprof_engine* e) {                                             \
        return e != nullptr && e->impl ? static_cast<int32_t>(e->impl->topology())                               \
                                       : static_cast<int32_t>(TPPROF_TOPOLOGY_ALL_RANKS);                        \
    }                                                                                                            \
    TPPROF_EXPORT int32_t tpprof_generate(tpprof_engine* e, const tpprof_prompt* prompts, size_t n,                 \
                                       uint32_t max_new_tokens, int32_t exact_length, tpprof_on_token_fn on_token, \
                                       void* user, char* err, size_t errlen) {                                   \
        return tpprof::guarded(NAME, err, errlen, [&] {                                                          \
            if (e == nullptr || !e->impl) throw tpprof::invalid("generate() got a NULL engine");                 \
            tpprof::GenerateCall call{prompts, n, max_new_tokens, exact_length != 0, on_token, user};            \
            tpprof::check_generate_args(call);                                                                   \
            e->impl->generate(call);                                                                             \
        });                                                                                                      \
    }                                                                                                            \
    TPPROF_EXPORT int32_t tpprof_memory(const tpprof_engine* e, tpprof_memory_stats* stats, char* err,            \
                                     size_t errlen) {                                                            \
        return tpprof::guarded(NAME, err, errlen, [&] {                                                          \
            if (e == nullptr || !e->impl || stats == nullptr) throw tpprof::invalid("memory() got a NULL argument"); \
            *stats = e->impl->memory();                                                                          \
        });                                                                                                      \
    }                                                                                                            \
    TPPROF_EXPORT void tpprof_destroy(tpprof_engine* e) {                                                           \
        try {                                                                                                    \
            delete e;                                                                                            \
        } catch (...) {                                                                                          \
        }                                                                                                        \
    }

#endif  // TPPROF_ADAPTER_HPP
