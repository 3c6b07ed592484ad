// The C side of lq-train's data-parallel training (src/dist.rs): a c10d process group (TCPStore rendezvous +
// ProcessGroupGloo, both compiled into libtorch_cpu.so), PyTorch DDP's own gradient Reducer on it (bucketed
// all-reduce launched from autograd hooks while backward runs), and synchronised BatchNorm as a libtorch autograd
// function.
// Every entry point catches C++ exceptions (lq::guard) and returns -1 / null with the message kept for
// lq_last_error, so no exception crosses into Rust. Tensors cross as `at::Tensor*`, which is what tch's C_tensor is.
#include "guard.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <chrono>
#include <cstdlib>
#include <string>

namespace {

// Collectives go through the ProcessGroup front, which dispatches on the tensors' device (both to Gloo here; the
// place where a CUDA build would register ProcessGroupNCCL for CUDA tensors).
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
  std::chrono::milliseconds timeout;
  int rank, world;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1: return c10d::ReduceOp::MIN;
    case 2: return c10d::ReduceOp::MAX;
    default: return c10d::ReduceOp::SUM;
  }
}

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
  if (!work->wait(g->timeout)) throw std::runtime_error(std::string(what) + " timed out");
}

void all_reduce(Group* g, at::Tensor& t, int op) {
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = reduce_op(op);
  o.timeout = g->timeout;
  wait(g, g->pg->allreduce(v, o), "all-reduce");
}

// Synchronised BatchNorm over all ranks (NCHW or NC): the batch statistics are sums over every rank's images,
// reduced in f64; the backward reduces Σdy and Σdy·x̂ the same way, so dx is the gradient of the sum of all ranks'
// losses, as torch.nn.SyncBatchNorm computes it. dγ and dβ stay local: the trainer averages them with the other
// gradients. Running statistics take the global mean and unbiased variance.
struct SyncBn : public torch::autograd::Function<SyncBn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, at::Tensor rm, at::Tensor rv, double momentum, double eps,
                            int64_t group) {
    auto* g = reinterpret_cast<Group*>(group);
    const int64_t c = x.size(1);
    std::vector<int64_t> dims{0};
    for (int64_t d = 2; d < x.dim(); d++) dims.push_back(d);
    auto stats = at::cat({at::sum(x, dims, false, at::kDouble), at::sum(x * x, dims, false, at::kDouble),
                          at::full({1}, static_cast<double>(x.numel() / c), x.options().dtype(at::kDouble))});
    all_reduce(g, stats, 0);
    auto n = stats[2 * c].item<double>();
    auto mean = stats.slice(0, 0, c) / n;
    auto var = (stats.slice(0, c, 2 * c) / n - mean * mean).clamp_min(0.0);
    auto invstd = (var + eps).rsqrt();
    if (rm.defined()) {
      rm.mul_(1.0 - momentum).add_(mean.to(rm.scalar_type()), momentum);
      rv.mul_(1.0 - momentum).add_((var * (n / std::max(n - 1.0, 1.0))).to(rv.scalar_type()), momentum);
    }
    std::vector<int64_t> shape(x.dim(), 1);
    shape[1] = c;
    auto xhat = (x - mean.to(x.scalar_type()).view(shape)) * invstd.to(x.scalar_type()).view(shape);
    auto y = xhat;
    if (w.defined()) y = y * w.view(shape);
    if (b.defined()) y = y + b.view(shape);
    ctx->save_for_backward({xhat, w, invstd.to(x.scalar_type())});
    ctx->saved_data["n"] = n;
    ctx->saved_data["group"] = group;
    ctx->saved_data["affine_b"] = b.defined();
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto xhat = saved[0], w = saved[1], invstd = saved[2];
    auto n = ctx->saved_data["n"].toDouble();
    auto* g = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    auto dy = grads[0];
    const int64_t c = xhat.size(1);
    std::vector<int64_t> dims{0};
    for (int64_t d = 2; d < xhat.dim(); d++) dims.push_back(d);
    std::vector<int64_t> shape(xhat.dim(), 1);
    shape[1] = c;
    auto red = at::cat({at::sum(dy, dims, false, at::kDouble), at::sum(dy * xhat, dims, false, at::kDouble)});
    auto sum_dy = red.slice(0, 0, c).to(dy.scalar_type(), false, true);  // local: copies before the reduce
    auto sum_dy_xhat = red.slice(0, c, 2 * c).to(dy.scalar_type(), false, true);
    all_reduce(g, red, 0);
    auto mean_dy = (red.slice(0, 0, c) / n).to(dy.scalar_type()).view(shape);
    auto mean_dy_xhat = (red.slice(0, c, 2 * c) / n).to(dy.scalar_type()).view(shape);
    auto scale = w.defined() ? (w * invstd).view(shape) : invstd.view(shape);
    auto dx = scale * (dy - mean_dy - xhat * mean_dy_xhat);
    at::Tensor dw = w.defined() ? sum_dy_xhat : at::Tensor();
    at::Tensor db = ctx->saved_data["affine_b"].toBool() ? sum_dy : at::Tensor();
    return {dx, dw, db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

const char* lq_last_error() { return lq::last_error.c_str(); }

// Joins the group: rank 0 serves the TCPStore at addr:port; every rank waits at most timeout_ms for the others, at
// start-up and in every collective. Gloo's device binds GLOO_SOCKET_IFNAME when set, else the interface of addr
// when it is a loopback address, else this host's name (as torch.distributed does).
void* lqd_new(const char* addr, int port, int rank, int world, int64_t timeout_ms) {
  Group* out = nullptr;
  int rc = lq::guard([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = world;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string host(addr);
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (host == "localhost" || host.rfind("127.", 0) == 0) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    pg->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::GLOO, gloo);
    out = new Group{store, gloo, timeout, rank, world, pg};
  });
  return rc == 0 ? out : nullptr;
}

// Closing is left to process exit: an autograd graph built with synchronised BN keeps a pointer to the group
// and may run its backward after the Rust side let go (one group per process, so nothing accumulates).
void lqd_free(void* g) { (void)g; }

// In place over a dense tensor: op 0 sum, 1 min, 2 max.
int lqd_all_reduce(void* g, at::Tensor* t, int op) {
  return lq::guard([&] { all_reduce(static_cast<Group*>(g), *t, op); });
}

// In place: every rank's tensor becomes root's.
int lqd_broadcast(void* gp, at::Tensor* t, int root) {
  return lq::guard([&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<at::Tensor> v{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = g->timeout;
    wait(g, g->pg->broadcast(v, o), "broadcast");
  });
}

// Synchronised BatchNorm in training mode; w, b, rm, rv may be null (no affine / no running statistics).
int lqd_sync_bn(void* g, at::Tensor* x, at::Tensor* w, at::Tensor* b, at::Tensor* rm, at::Tensor* rv,
                double momentum, double eps, at::Tensor** out) {
  return lq::guard([&] {
    auto opt = [](at::Tensor* t) { return t ? *t : at::Tensor(); };
    auto y = SyncBn::apply(*x, opt(w), opt(b), opt(rm), opt(rv), momentum, eps, reinterpret_cast<int64_t>(g));
    *out = new at::Tensor(std::move(y));
  });
}

// DDP's Reducer over `n` parameters (in forward order): buckets of `bucket_bytes` (the first 1 MiB, as DDP), in
// reverse order because gradients become ready from the last layer back. Each step: lqd_ddp_prepare before the
// backward; when backward returns, every parameter's .grad is the average over ranks.
int lqd_ddp_new(void* gp, at::Tensor** params, int n, int64_t bucket_bytes, void** out) {
  return lq::guard([&] {
    auto* g = static_cast<Group*>(gp);
    std::vector<at::Tensor> ps;
    for (int i = 0; i < n; i++) ps.push_back(*params[i]);
    std::vector<bool> sparse(n, false);
    auto [buckets, limits] = c10d::compute_bucket_assignment_by_size(
        ps, {static_cast<size_t>(c10d::kDefaultFirstBucketBytes), static_cast<size_t>(bucket_bytes)}, sparse);
    std::reverse(buckets.begin(), buckets.end());
    std::vector<int64_t> caps(limits.rbegin(), limits.rend());
    auto* r = new std::shared_ptr<c10d::Reducer>(std::make_shared<c10d::Reducer>(
        ps, buckets, g->pg, sparse, bucket_bytes, /*find_unused_parameters=*/false,
        /*gradient_as_bucket_view=*/false, std::unordered_map<size_t, std::string>{},
        c10d::kDefaultFirstBucketBytes, /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
        caps));
    *out = r;
  });
}

int lqd_ddp_prepare(void* r) {
  return lq::guard([&] {
    auto& red = *static_cast<std::shared_ptr<c10d::Reducer>*>(r);
    // As DDP's forward: after the first step, buckets follow the order the gradients arrived in (all ranks
    // agree via one broadcast), and the reducer's per-step record of that order is cleared.
    red->rebuild_buckets();
    red->prepare_for_forward();
    red->prepare_for_backward({});
  });
}

void lqd_ddp_free(void* r) {
  lq::guard([&] { delete static_cast<std::shared_ptr<c10d::Reducer>*>(r); });  // ~Reducer may throw
}

}  // extern "C"
