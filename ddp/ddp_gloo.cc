// ddp_gloo: Gloo behind a C ABI (ddp_gloo.h), the only C++ of the project.
//
// Rendezvous: a gloo::rendezvous::Store over the caller's two callbacks.
// Gloo's own RedisStore cannot be used: it has no AUTH, database, socket,
// key prefix or expiry.  wait() polls get() every few milliseconds until
// every key is there or the time-out passes; Gloo then reads them with
// get().  Every rank publishes its own address and connects to every other
// (connectFullMesh).  Collectives are Gloo's allreduce (sum), broadcast and
// barrier on float32, each bounded by the context's time-out, so a peer
// that was SIGKILLed fails the call at once (connection reset) and one that
// is SIGSTOPped fails it at the time-out.  Gloo cannot cancel a call in
// flight; the worker bounds that by running each rank in a child process.
// Every exception is caught here and becomes -1 with its message.

#include "ddp_gloo.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

struct ddp_gloo {
    std::shared_ptr<gloo::rendezvous::Context> ctx;
    std::shared_ptr<gloo::transport::Device> dev;
    uint32_t tag = 0; // one per collective, in the same order on every rank
};

namespace {

void say(char *msg, size_t msg_n, const char *what, const char *detail)
{
    if (msg && msg_n)
        std::snprintf(msg, msg_n, "%s: %s", what, detail);
}

class CallbackStore : public gloo::rendezvous::Store {
  public:
    CallbackStore(const ddp_gloo_store &s, std::chrono::milliseconds timeout) : s_(s), timeout_(timeout) {}

    void set(const std::string &key, const std::vector<char> &data) override
    {
        char msg[256] = "";
        if (s_.set(s_.ctx, key.c_str(), data.data(), data.size(), msg, sizeof msg) != 0)
            throw std::runtime_error(std::string("publishing ") + key + ": " + msg);
    }

    std::vector<char> get(const std::string &key) override
    {
        wait({key}, timeout_);
        char msg[256] = "";
        void *data = nullptr;
        size_t n = 0;
        int rc = s_.get(s_.ctx, key.c_str(), &data, &n, msg, sizeof msg);
        if (rc != 1) {
            std::free(data);
            throw std::runtime_error(std::string("reading ") + key + ": " + (rc == 0 ? "gone (expired)" : msg));
        }
        std::vector<char> out(static_cast<char *>(data), static_cast<char *>(data) + n);
        std::free(data);
        return out;
    }

    void wait(const std::vector<std::string> &keys) override { wait(keys, timeout_); }

    void wait(const std::vector<std::string> &keys, const std::chrono::milliseconds &timeout) override
    {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (const std::string &key : keys) {
            for (;;) {
                char msg[256] = "";
                void *data = nullptr;
                size_t n = 0;
                int rc = s_.get(s_.ctx, key.c_str(), &data, &n, msg, sizeof msg);
                std::free(data);
                if (rc == 1)
                    break;
                if (rc < 0)
                    throw std::runtime_error(std::string("waiting for ") + key + ": " + msg);
                if (std::chrono::steady_clock::now() >= deadline)
                    throw std::runtime_error("no rank published rendezvous key '" + key + "' within " +
                                             std::to_string(timeout.count()) + " ms (is every rank of the gang up?)");
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        }
    }

  private:
    ddp_gloo_store s_;
    std::chrono::milliseconds timeout_;
};

} // namespace

extern "C" int ddp_gloo_open(const ddp_gloo_store *store, int rank, int size, int64_t timeout_ms, const char *addr,
                             const char *iface, ddp_gloo **out, char *msg, size_t msg_n)
{
    *out = nullptr;
    ddp_gloo *g = nullptr;
    try {
        g = new ddp_gloo;
        gloo::transport::tcp::attr attr;
        if (addr && *addr)
            attr.hostname = addr;
        else if (iface && *iface)
            attr.iface = iface;
        g->dev = gloo::transport::tcp::CreateDevice(attr);
        g->ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
        g->ctx->setTimeout(std::chrono::milliseconds(timeout_ms));
        CallbackStore s(*store, std::chrono::milliseconds(timeout_ms));
        g->ctx->connectFullMesh(s, g->dev);
        *out = g;
        return 0;
    } catch (const std::exception &e) {
        say(msg, msg_n, "connecting the gang (Gloo)", e.what());
    } catch (...) {
        say(msg, msg_n, "connecting the gang (Gloo)", "an unknown C++ exception");
    }
    delete g;
    return -1;
}

extern "C" int ddp_gloo_allreduce_sum(ddp_gloo *g, float *buf, size_t n, char *msg, size_t msg_n)
{
    if (n == 0)
        return 0;
    try {
        gloo::AllreduceOptions opts(g->ctx);
        opts.setOutput(buf, n);
        opts.setReduceFunction(
            static_cast<void (*)(void *, const void *, const void *, size_t)>(&gloo::sum<float>));
        opts.setTag(g->tag++);
        gloo::allreduce(opts);
        return 0;
    } catch (const std::exception &e) {
        say(msg, msg_n, "all-reduce (Gloo)", e.what());
    } catch (...) {
        say(msg, msg_n, "all-reduce (Gloo)", "an unknown C++ exception");
    }
    return -1;
}

extern "C" int ddp_gloo_broadcast(ddp_gloo *g, float *buf, size_t n, int root, char *msg, size_t msg_n)
{
    if (n == 0)
        return 0;
    try {
        gloo::BroadcastOptions opts(g->ctx);
        opts.setOutput(buf, n);
        opts.setRoot(root);
        opts.setTag(g->tag++);
        gloo::broadcast(opts);
        return 0;
    } catch (const std::exception &e) {
        say(msg, msg_n, "broadcast (Gloo)", e.what());
    } catch (...) {
        say(msg, msg_n, "broadcast (Gloo)", "an unknown C++ exception");
    }
    return -1;
}

extern "C" int ddp_gloo_allgatherv(ddp_gloo *g, const void *send, size_t bytes, void *recv, const size_t *each,
                                   int size, char *msg, size_t msg_n)
{
    try {
        std::vector<size_t> counts(each, each + size);
        gloo::AllgathervOptions opts(g->ctx);
        // Gloo reads the input only; its setter takes a pointer it may write.
        opts.setInput(static_cast<char *>(const_cast<void *>(send)), bytes);
        opts.setOutput(static_cast<char *>(recv), counts);
        opts.setTag(g->tag++);
        gloo::allgatherv(opts);
        return 0;
    } catch (const std::exception &e) {
        say(msg, msg_n, "all-gather (Gloo)", e.what());
    } catch (...) {
        say(msg, msg_n, "all-gather (Gloo)", "an unknown C++ exception");
    }
    return -1;
}

extern "C" int ddp_gloo_barrier(ddp_gloo *g, int64_t timeout_ms, char *msg, size_t msg_n)
{
    try {
        gloo::BarrierOptions opts(g->ctx);
        opts.setTimeout(std::chrono::milliseconds(timeout_ms));
        opts.setTag(g->tag++);
        gloo::barrier(opts);
        return 0;
    } catch (const std::exception &e) {
        say(msg, msg_n, "barrier (Gloo)", e.what());
    } catch (...) {
        say(msg, msg_n, "barrier (Gloo)", "an unknown C++ exception");
    }
    return -1;
}

extern "C" void ddp_gloo_close(ddp_gloo *g)
{
    try {
        delete g;
    } catch (...) {
        // a destructor that throws leaves nothing to do
    }
}
