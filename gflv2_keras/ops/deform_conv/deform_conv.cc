// Deformable convolution (mmcv DCNv1 / DCNv2 semantics) as TensorFlow CPU ops, NHWC.
//
//   GflDeformConv2d      input (B,H,W,C), offset (B,Ho,Wo,G*K*2), mask (B,Ho,Wo,G*K), weight (kh,kw,C/groups,F)
//                        -> output (B,Ho,Wo,F)
//   GflDeformConv2dGrad  grad_output, input, offset, mask, weight
//                        -> grad_input, grad_offset, grad_mask, grad_weight
//
// K = kh*kw taps (row-major, tap k = i*kw + j), G = deform_groups. Offset channel
// (g*K + k)*2 is dy and +1 is dx; mask channel g*K + k. Without `modulated` the mask input
// is ignored (any shape) and its gradient is zeros of its shape. Sampling position of
// output (ho, wo), tap (i, j): y = ho*stride_h - pad_h + i*dil_h + dy (x likewise), bilinear
// with mmcv's zero rule: y <= -1, y >= H, x <= -1 or x >= W gives 0, and every corner outside
// the image contributes 0. The gradients are the exact derivatives of that piecewise-bilinear
// function using the cell [floor(y), floor(y)+1], which is what mmcv's kernels compute.
//
// Work is split into blocks of output pixels. Each block is im2col'ed into a column buffer laid
// out [conv group][pixel][tap][channel in group], so that every conv group is one contiguous
// (pixels, K*C/groups) matrix for an Eigen GEMM against the matching weight columns.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/threadpool.h"

namespace gflv2 {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;
using Status = ::absl::Status;
using Scheduling = ::tensorflow::thread::ThreadPool::SchedulingParams;

template <typename T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using ConstMap = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using MutableMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;

Status SharedShapeChecks(InferenceContext* c) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &unused));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &unused));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("GflDeformConv2d")
    .Input("input: T")
    .Input("offset: T")
    .Input("mask: T")
    .Input("weight: T")
    .Output("output: T")
    .Attr("T: {float, double}")
    .Attr("strides: list(int) = [1, 1]")
    .Attr("padding: list(int) = [0, 0]")
    .Attr("dilations: list(int) = [1, 1]")
    .Attr("groups: int = 1")
    .Attr("deform_groups: int = 1")
    .Attr("modulated: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(SharedShapeChecks(c));
      ShapeHandle input = c->input(0), offset = c->input(1), weight = c->input(3);
      c->set_output(0, c->MakeShape({c->Dim(input, 0), c->Dim(offset, 1),
                                     c->Dim(offset, 2), c->Dim(weight, 3)}));
      return absl::OkStatus();
    })
    .Doc("mmcv-compatible deformable convolution (NHWC). See deform_conv.cc.");

REGISTER_OP("GflDeformConv2dGrad")
    .Input("grad_output: T")
    .Input("input: T")
    .Input("offset: T")
    .Input("mask: T")
    .Input("weight: T")
    .Output("grad_input: T")
    .Output("grad_offset: T")
    .Output("grad_mask: T")
    .Output("grad_weight: T")
    .Attr("T: {float, double}")
    .Attr("strides: list(int) = [1, 1]")
    .Attr("padding: list(int) = [0, 0]")
    .Attr("dilations: list(int) = [1, 1]")
    .Attr("groups: int = 1")
    .Attr("deform_groups: int = 1")
    .Attr("modulated: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < 4; ++i) c->set_output(i, c->input(i + 1));
      return absl::OkStatus();
    })
    .Doc("Gradients of GflDeformConv2d wrt input, offset, mask and weight.");

namespace {

struct Geometry {
  int64_t batch, height, width, channels;
  int64_t out_h, out_w, filters;
  int64_t kh, kw, taps;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups, deform_groups;
  int64_t cin_per_group, fout_per_group, ch_per_deform_group;
  bool modulated;

  int64_t pixels_per_image() const { return out_h * out_w; }
  int64_t group_cols() const { return taps * cin_per_group; }  // GEMM inner size per group
};

// One bilinear sample: the in-image corners with their weights and the derivatives of those
// weights wrt the sampling position. Corners outside the image are simply absent (mmcv's
// per-corner zero rule); `inside` is false when the whole sample is zero (the early-out).
template <typename T>
struct BilinearSample {
  bool inside = false;
  int num = 0;
  int64_t pixel[4];  // y * W + x
  T weight[4];
  T dweight_dy[4];
  T dweight_dx[4];
};

template <typename T>
inline BilinearSample<T> SampleBilinear(T y, T x, int64_t height, int64_t width) {
  BilinearSample<T> s;
  // Written so that NaN positions also fall in the zero branch.
  if (!(y > T(-1) && x > T(-1) && y < T(height) && x < T(width))) return s;
  s.inside = true;
  const T y_floor = std::floor(y), x_floor = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(y_floor), x0 = static_cast<int64_t>(x_floor);
  const T ly = y - y_floor, lx = x - x_floor, hy = T(1) - ly, hx = T(1) - lx;
  const int64_t corner_y[4] = {y0, y0, y0 + 1, y0 + 1};
  const int64_t corner_x[4] = {x0, x0 + 1, x0, x0 + 1};
  const T wy[4] = {hy, hy, ly, ly}, wx[4] = {hx, lx, hx, lx};
  const T sign_y[4] = {-1, -1, 1, 1}, sign_x[4] = {-1, 1, -1, 1};
  for (int c = 0; c < 4; ++c) {
    if (corner_y[c] < 0 || corner_y[c] >= height || corner_x[c] < 0 || corner_x[c] >= width) continue;
    s.pixel[s.num] = corner_y[c] * width + corner_x[c];
    s.weight[s.num] = wy[c] * wx[c];
    s.dweight_dy[s.num] = sign_y[c] * wx[c];
    s.dweight_dx[s.num] = wy[c] * sign_x[c];
    ++s.num;
  }
  return s;
}

// Calls fn(row, global_row, image, tap, k, sample, mask) for every output pixel in
// [row_begin, row_end) (flattened over batch, out_h, out_w), tap and deform group, where
// k = deform_group * taps + tap indexes the mask channel and offset channel pair.
template <typename T, typename Fn>
void ForEachSample(const Geometry& g, const T* offset, const T* mask, int64_t row_begin,
                   int64_t row_end, Fn&& fn) {
  const int64_t per_image = g.pixels_per_image();
  const int64_t num_k = g.deform_groups * g.taps;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t image = r / per_image;
    const int64_t ho = (r % per_image) / g.out_w, wo = r % g.out_w;
    const T* off = offset + r * num_k * 2;
    for (int64_t k = 0; k < num_k; ++k) {
      const int64_t tap = k % g.taps;
      const int64_t i = tap / g.kw, j = tap % g.kw;
      const T y = static_cast<T>(ho * g.stride_h - g.pad_h + i * g.dil_h) + off[2 * k];
      const T x = static_cast<T>(wo * g.stride_w - g.pad_w + j * g.dil_w) + off[2 * k + 1];
      const T m = g.modulated ? mask[r * num_k + k] : T(1);
      fn(r - row_begin, r, image, tap, k, SampleBilinear(y, x, g.height, g.width), m);
    }
  }
}

// Splits the channels of deform group `dgroup` into runs that stay inside one conv group and
// calls fn(first_channel, length) for each (a run is contiguous in both input and columns).
template <typename Fn>
inline void ForEachChannelRun(const Geometry& g, int64_t dgroup, Fn&& fn) {
  int64_t c = dgroup * g.ch_per_deform_group;
  const int64_t end = c + g.ch_per_deform_group;
  while (c < end) {
    const int64_t run_end = std::min(end, (c / g.cin_per_group + 1) * g.cin_per_group);
    fn(c, run_end - c);
    c = run_end;
  }
}

// Column buffer for `rows` output pixels, layout [conv group][row][tap][channel in group].
template <typename T>
struct Columns {
  const Geometry& g;
  int64_t rows;
  T* data;

  T* At(int64_t row, int64_t tap, int64_t channel) const {
    const int64_t group = channel / g.cin_per_group, c = channel % g.cin_per_group;
    return data + ((group * rows + row) * g.taps + tap) * g.cin_per_group + c;
  }
  ConstMap<T> GroupMatrix(int64_t group) const {
    return ConstMap<T>(data + group * rows * g.group_cols(), rows, g.group_cols(),
                       Eigen::OuterStride<>(g.group_cols()));
  }
  MutableMap<T> MutableGroupMatrix(int64_t group) const {
    return MutableMap<T>(data + group * rows * g.group_cols(), rows, g.group_cols(),
                         Eigen::OuterStride<>(g.group_cols()));
  }
};

// Columns of `group` in a row-major matrix with `filters` columns (weight, output, grads).
template <typename T>
ConstMap<T> GroupSlice(const Geometry& g, const T* base, int64_t rows, int64_t group) {
  return ConstMap<T>(base + group * g.fout_per_group, rows, g.fout_per_group,
                     Eigen::OuterStride<>(g.filters));
}
template <typename T>
MutableMap<T> MutableGroupSlice(const Geometry& g, T* base, int64_t rows, int64_t group) {
  return MutableMap<T>(base + group * g.fout_per_group, rows, g.fout_per_group,
                       Eigen::OuterStride<>(g.filters));
}

// Masked bilinear im2col of rows [row_begin, row_end) into `cols`.
template <typename T>
void Im2Col(const Geometry& g, const T* input, const T* offset, const T* mask, int64_t row_begin,
            int64_t row_end, const Columns<T>& cols) {
  const int64_t image_size = g.height * g.width * g.channels;
  ForEachSample<T>(g, offset, mask, row_begin, row_end,
                   [&](int64_t row, int64_t, int64_t image, int64_t tap, int64_t k,
                       const BilinearSample<T>& s, T m) {
                     const T* img = input + image * image_size;
                     ForEachChannelRun(g, k / g.taps, [&](int64_t ch, int64_t len) {
                       T* col = cols.At(row, tap, ch);
                       std::fill(col, col + len, T(0));
                       for (int n = 0; n < s.num; ++n) {
                         const T w = m * s.weight[n];
                         const T* src = img + s.pixel[n] * g.channels + ch;
                         for (int64_t c = 0; c < len; ++c) col[c] += w * src[c];
                       }
                     });
                   });
}

// Output pixels per block: a column buffer of roughly 128K elements, but enough blocks to keep
// every thread busy.
int64_t RowsPerBlock(const Geometry& g, int64_t total_rows, int num_threads) {
  const int64_t by_cache = std::max<int64_t>(8, std::min<int64_t>(256, 131072 / (g.taps * g.channels)));
  const int64_t by_threads = std::max<int64_t>(8, total_rows / (4 * std::max(num_threads, 1)));
  return std::max<int64_t>(1, std::min(by_cache, by_threads));
}

class DeformConvOpBase : public OpKernel {
 public:
  explicit DeformConvOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int32_t> strides, padding, dilations;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("strides", &strides));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dilations", &dilations));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("deform_groups", &deform_groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("modulated", &modulated_));
    OP_REQUIRES(ctx, strides.size() == 2 && padding.size() == 2 && dilations.size() == 2,
                errors::InvalidArgument("strides, padding and dilations must have 2 entries (h, w)"));
    OP_REQUIRES(ctx, strides[0] >= 1 && strides[1] >= 1 && dilations[0] >= 1 && dilations[1] >= 1,
                errors::InvalidArgument("strides and dilations must be >= 1"));
    OP_REQUIRES(ctx, padding[0] >= 0 && padding[1] >= 0,
                errors::InvalidArgument("padding must be >= 0"));
    OP_REQUIRES(ctx, groups_ >= 1 && deform_groups_ >= 1,
                errors::InvalidArgument("groups and deform_groups must be >= 1"));
    strides_ = {strides[0], strides[1]};
    padding_ = {padding[0], padding[1]};
    dilations_ = {dilations[0], dilations[1]};
  }

 protected:
  Status MakeGeometry(const Tensor& input, const Tensor& offset, const Tensor& mask,
                      const Tensor& weight, Geometry* g) const {
    if (input.dims() != 4)
      return errors::InvalidArgument("input must be 4-D (B,H,W,C), got ", input.shape().DebugString());
    if (weight.dims() != 4)
      return errors::InvalidArgument("weight must be 4-D (kh,kw,C/groups,F), got ", weight.shape().DebugString());
    if (offset.dims() != 4)
      return errors::InvalidArgument("offset must be 4-D (B,Ho,Wo,2*deform_groups*kh*kw), got ",
                                     offset.shape().DebugString());
    g->batch = input.dim_size(0);
    g->height = input.dim_size(1);
    g->width = input.dim_size(2);
    g->channels = input.dim_size(3);
    g->kh = weight.dim_size(0);
    g->kw = weight.dim_size(1);
    g->taps = g->kh * g->kw;
    g->filters = weight.dim_size(3);
    g->stride_h = strides_[0];
    g->stride_w = strides_[1];
    g->pad_h = padding_[0];
    g->pad_w = padding_[1];
    g->dil_h = dilations_[0];
    g->dil_w = dilations_[1];
    g->groups = groups_;
    g->deform_groups = deform_groups_;
    g->modulated = modulated_;
    if (g->taps == 0) return errors::InvalidArgument("kernel must not be empty");
    if (g->channels % groups_ != 0 || weight.dim_size(2) * groups_ != g->channels)
      return errors::InvalidArgument("input channels (", g->channels, ") must equal weight.shape[2] (",
                                     weight.dim_size(2), ") * groups (", groups_, ")");
    if (g->filters % groups_ != 0)
      return errors::InvalidArgument("filters (", g->filters, ") must be divisible by groups (", groups_, ")");
    if (g->channels % deform_groups_ != 0)
      return errors::InvalidArgument("input channels (", g->channels, ") must be divisible by deform_groups (",
                                     deform_groups_, ")");
    g->cin_per_group = g->channels / groups_;
    g->fout_per_group = g->filters / groups_;
    g->ch_per_deform_group = g->channels / deform_groups_;
    const int64_t span_h = g->dil_h * (g->kh - 1) + 1, span_w = g->dil_w * (g->kw - 1) + 1;
    g->out_h = (g->height + 2 * g->pad_h - span_h) / g->stride_h + 1;
    g->out_w = (g->width + 2 * g->pad_w - span_w) / g->stride_w + 1;
    if (g->height + 2 * g->pad_h < span_h || g->width + 2 * g->pad_w < span_w)
      return errors::InvalidArgument("padded input ", input.shape().DebugString(),
                                     " is smaller than the dilated kernel");
    const int64_t num_k = deform_groups_ * g->taps;
    const TensorShape want_offset({g->batch, g->out_h, g->out_w, 2 * num_k});
    if (offset.shape() != want_offset)
      return errors::InvalidArgument("offset shape ", offset.shape().DebugString(), " != expected ",
                                     want_offset.DebugString());
    if (modulated_) {
      const TensorShape want_mask({g->batch, g->out_h, g->out_w, num_k});
      if (mask.shape() != want_mask)
        return errors::InvalidArgument("mask shape ", mask.shape().DebugString(), " != expected ",
                                       want_mask.DebugString());
    }
    return absl::OkStatus();
  }

  std::vector<int64_t> strides_, padding_, dilations_;
  int64_t groups_ = 1, deform_groups_ = 1;
  bool modulated_ = false;
};

template <typename T>
class DeformConvOp : public DeformConvOpBase {
 public:
  using DeformConvOpBase::DeformConvOpBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& offset = ctx->input(1);
    const Tensor& mask = ctx->input(2);
    const Tensor& weight = ctx->input(3);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(input, offset, mask, weight, &g));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g.batch, g.out_h, g.out_w, g.filters}), &output));
    const int64_t total_rows = g.batch * g.pixels_per_image();
    if (total_rows == 0 || g.filters == 0) return;

    const T* in = input.flat<T>().data();
    const T* off = offset.flat<T>().data();
    const T* msk = g.modulated ? mask.flat<T>().data() : nullptr;
    const T* w = weight.flat<T>().data();
    T* out = output->flat<T>().data();

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t block = RowsPerBlock(g, total_rows, pool->NumThreads());
    const int64_t num_blocks = (total_rows + block - 1) / block;
    pool->ParallelFor(num_blocks, Scheduling::Fixed(1), [&](int64_t first, int64_t last) {
      std::vector<T> buffer(block * g.taps * g.channels);
      for (int64_t b = first; b < last; ++b) {
        const int64_t r0 = b * block, r1 = std::min(total_rows, r0 + block);
        const Columns<T> cols{g, r1 - r0, buffer.data()};
        Im2Col(g, in, off, msk, r0, r1, cols);
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          MutableGroupSlice(g, out + r0 * g.filters, r1 - r0, grp).noalias() =
              cols.GroupMatrix(grp) * GroupSlice(g, w, g.group_cols(), grp);
        }
      }
    });
  }
};

template <typename T>
class DeformConvGradOp : public DeformConvOpBase {
 public:
  using DeformConvOpBase::DeformConvOpBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad_output = ctx->input(0);
    const Tensor& input = ctx->input(1);
    const Tensor& offset = ctx->input(2);
    const Tensor& mask = ctx->input(3);
    const Tensor& weight = ctx->input(4);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(input, offset, mask, weight, &g));
    const TensorShape want_grad({g.batch, g.out_h, g.out_w, g.filters});
    OP_REQUIRES(ctx, grad_output.shape() == want_grad,
                errors::InvalidArgument("grad_output shape ", grad_output.shape().DebugString(),
                                        " != expected ", want_grad.DebugString()));
    Tensor *grad_input, *grad_offset, *grad_mask, *grad_weight;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &grad_input));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, offset.shape(), &grad_offset));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, mask.shape(), &grad_mask));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, weight.shape(), &grad_weight));
    grad_input->flat<T>().setZero();
    grad_offset->flat<T>().setZero();
    grad_mask->flat<T>().setZero();
    grad_weight->flat<T>().setZero();
    const int64_t per_image = g.pixels_per_image();
    if (g.batch * per_image == 0 || g.filters == 0) return;

    const T* go = grad_output.flat<T>().data();
    const T* in = input.flat<T>().data();
    const T* off = offset.flat<T>().data();
    const T* msk = g.modulated ? mask.flat<T>().data() : nullptr;
    const T* w = weight.flat<T>().data();
    T* g_in = grad_input->flat<T>().data();
    T* g_off = grad_offset->flat<T>().data();
    T* g_msk = g.modulated ? grad_mask->flat<T>().data() : nullptr;
    T* g_w = grad_weight->flat<T>().data();

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t block = RowsPerBlock(g, per_image, pool->NumThreads());
    const int64_t blocks_per_image = (per_image + block - 1) / block;
    // Several output pixels scatter into the same input pixel, so every shard accumulates
    // grad_input (per image) and grad_weight in its own buffer; shard 0 writes the outputs.
    const int64_t shards = std::max<int64_t>(1, std::min<int64_t>(pool->NumThreads(), blocks_per_image));
    const int64_t image_size = g.height * g.width * g.channels;
    const int64_t weight_size = weight.NumElements();
    std::vector<std::vector<T>> shard_input(shards - 1, std::vector<T>(image_size));
    std::vector<std::vector<T>> shard_weight(shards - 1, std::vector<T>(weight_size, T(0)));

    for (int64_t image = 0; image < g.batch; ++image) {
      T* g_in_image = g_in + image * image_size;
      for (auto& buf : shard_input) std::fill(buf.begin(), buf.end(), T(0));
      pool->ParallelFor(shards, Scheduling::Fixed(1), [&](int64_t first, int64_t last) {
        std::vector<T> col_buf(block * g.taps * g.channels), grad_col_buf(block * g.taps * g.channels);
        for (int64_t s = first; s < last; ++s) {
          T* gi = s == 0 ? g_in_image : shard_input[s - 1].data();
          T* gw = s == 0 ? g_w : shard_weight[s - 1].data();
          const int64_t b_begin = blocks_per_image * s / shards, b_end = blocks_per_image * (s + 1) / shards;
          for (int64_t b = b_begin; b < b_end; ++b) {
            const int64_t r0 = image * per_image + b * block;
            const int64_t r1 = image * per_image + std::min(per_image, (b + 1) * block);
            BackwardBlock(g, go, in, off, msk, w, r0, r1, Columns<T>{g, r1 - r0, col_buf.data()},
                          Columns<T>{g, r1 - r0, grad_col_buf.data()}, gi, gw, g_off, g_msk);
          }
        }
      });
      if (shards > 1) ReduceInto(pool, g_in_image, shard_input, image_size);
    }
    if (shards > 1) ReduceInto(pool, g_w, shard_weight, weight_size);
  }

 private:
  static void ReduceInto(tensorflow::thread::ThreadPool* pool, T* dst, const std::vector<std::vector<T>>& parts,
                         int64_t size) {
    pool->ParallelFor(size, Scheduling::Adaptive(static_cast<int64_t>(parts.size()) * 2),
                      [&](int64_t first, int64_t last) {
                        for (const auto& part : parts)
                          for (int64_t i = first; i < last; ++i) dst[i] += part[i];
                      });
  }

  // Rows [r0, r1) all belong to one image; gi is that image's grad_input accumulator.
  static void BackwardBlock(const Geometry& g, const T* go, const T* in, const T* off, const T* msk, const T* w,
                            int64_t r0, int64_t r1, const Columns<T>& cols, const Columns<T>& grad_cols, T* gi,
                            T* gw, T* g_off, T* g_msk) {
    const int64_t rows = r1 - r0;
    Im2Col(g, in, off, msk, r0, r1, cols);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const ConstMap<T> grad_out = GroupSlice(g, go + r0 * g.filters, rows, grp);
      grad_cols.MutableGroupMatrix(grp).noalias() = grad_out * GroupSlice(g, w, g.group_cols(), grp).transpose();
      MutableGroupSlice(g, gw, g.group_cols(), grp).noalias() += cols.GroupMatrix(grp).transpose() * grad_out;
    }
    const int64_t num_k = g.deform_groups * g.taps;
    const T* img = in + (r0 / g.pixels_per_image()) * g.height * g.width * g.channels;
    ForEachSample<T>(g, off, msk, r0, r1,
                     [&](int64_t row, int64_t global_row, int64_t, int64_t tap, int64_t k,
                         const BilinearSample<T>& s, T m) {
                       if (!s.inside) return;  // outputs were zero-initialised
                       T grad_value = 0, grad_y = 0, grad_x = 0;  // grad wrt the unmasked sample
                       ForEachChannelRun(g, k / g.taps, [&](int64_t ch, int64_t len) {
                         const T* gc = grad_cols.At(row, tap, ch);
                         for (int n = 0; n < s.num; ++n) {
                           const T* src = img + s.pixel[n] * g.channels + ch;
                           T* dst = gi + s.pixel[n] * g.channels + ch;
                           const T w_in = m * s.weight[n];
                           T dot = 0;
                           for (int64_t c = 0; c < len; ++c) {
                             dot += gc[c] * src[c];
                             dst[c] += w_in * gc[c];
                           }
                           grad_value += s.weight[n] * dot;
                           grad_y += s.dweight_dy[n] * dot;
                           grad_x += s.dweight_dx[n] * dot;
                         }
                       });
                       g_off[global_row * num_k * 2 + 2 * k] = m * grad_y;
                       g_off[global_row * num_k * 2 + 2 * k + 1] = m * grad_x;
                       if (g_msk != nullptr) g_msk[global_row * num_k + k] = grad_value;
                     });
  }
};

#define GFL_REGISTER_DEFORM_CONV(T)                                                               \
  REGISTER_KERNEL_BUILDER(Name("GflDeformConv2d").Device(DEVICE_CPU).TypeConstraint<T>("T"),     \
                          DeformConvOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(Name("GflDeformConv2dGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          DeformConvGradOp<T>);

GFL_REGISTER_DEFORM_CONV(float);
GFL_REGISTER_DEFORM_CONV(double);

#undef GFL_REGISTER_DEFORM_CONV

}  // namespace
}  // namespace gflv2
