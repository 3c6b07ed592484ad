// The activation quantizer's straight-through estimator as one libtorch autograd function (src/quant.rs): value
// Q(relu(x)), computed by lq-quant's fused pass, gradient dy·1[0 < x <= q_max] in a single pass. It replaces
// relu → clamp_max → (Q written over the clamp), whose backward reads and writes the activation map three times
// (ReLU mask, clamp compare, where). Also the loop that runs the fused pass's work items on libtorch's own
// (OpenMP) threads. Exceptions never cross into Rust (lq::guard).
#include "guard.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <torch/csrc/autograd/custom_function.h>

namespace {

struct ActSte : public torch::autograd::Function<ActSte> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& q,
                            double hi) {
    ctx->save_for_backward({x});
    ctx->saved_data["hi"] = hi;
    return q.view_as(q);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto x = ctx->get_saved_variables()[0];
    const double hi = ctx->saved_data["hi"].toDouble();
    auto dy = grads[0];
    // hardtanh_backward passes dy where min < x < max: one fused, vectorised, threaded pass; max just above
    // q_max keeps x == q_max (ties pass, as TF's minimum).
    auto dx = at::hardtanh_backward(dy, x, 0.0, std::nextafter(static_cast<float>(hi), INFINITY));
    return {dx, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// out = a new tensor with q's values and x's gradient path (see ActSte); q must have x's shape.
int lqs_act_ste(at::Tensor* x, at::Tensor* q, double hi, at::Tensor** out) {
  return lq::guard([&] {
    TORCH_CHECK(x->sizes() == q->sizes(), "activation STE: value and input shapes differ");
    *out = new at::Tensor(ActSte::apply(*x, *q, hi));
  });
}

// f(ctx, i) for every i in 0..n on at::parallel_for's threads (the pool libtorch's ops use, so none of its threads
// spins while another pool works). f must not throw or unwind.
int lqs_parallel_for(int64_t n, void (*f)(const void*, int64_t), const void* ctx) {
  return lq::guard([&] {
    at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) f(ctx, i);
    });
  });
}

}  // extern "C"
