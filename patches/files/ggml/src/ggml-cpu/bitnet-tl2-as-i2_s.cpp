// bitnet-tools: TL2 weights held as I2_S where TL2 has no fast kernel of its own
// (ggml_bitnet_tl2_as_i2_s). An extra CPU buffer type: the model loader places there every TL2
// weight whose MUL_MAT it supports, set_tensor converts the codes to I2_S (a fifth more bytes:
// 2 bits per weight instead of 1.67), and MUL_MAT runs ggml_bitnet_mul_mat on the weight seen as
// I2_S. Results are those of the TL2 kernels bit for bit: both are exact integer dots with the
// same float operations after them. --no-repack (use_extra_bufts = false) keeps TL2 as it is.
#include "ggml-backend-impl.h"
#include "ggml-cpu.h"
#include "ggml-impl.h"
#include "traits.h"
#include "bitnet.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace {

// a weight this buffer holds: one TL2 matrix, not a view into one
bool is_tl2_matrix(const ggml_tensor * w) {
    return w->type == GGML_TYPE_TL2 && w->ne[2] == 1 && w->ne[3] == 1 && w->view_src == nullptr;
}

bool in_this_buffer(const ggml_tensor * w) {
    return w->buffer && w->buffer->buft == ggml_backend_cpu_tl2_as_i2_s_buffer_type();
}

// the MUL_MAT with its weight seen as what the buffer holds: same shape, I2_S's layout
struct seen_as_i2_s {
    ggml_tensor w;
    ggml_tensor op;
    explicit seen_as_i2_s(const ggml_tensor * mul_mat) : w(*mul_mat->src[0]), op(*mul_mat) {
        GGML_ASSERT(mul_mat->op == GGML_OP_MUL_MAT && is_tl2_matrix(mul_mat->src[0]));
        w.type    = GGML_TYPE_I2_S;
        op.src[0] = &w;
    }
};

class tl2_traits : public ggml::cpu::tensor_traits {
    bool work_size(int n_threads, const ggml_tensor * op, size_t & size) override {
        seen_as_i2_s v(op);
        size = ggml_bitnet_mul_mat_wsize(&v.op, n_threads);
        return true;
    }
    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        seen_as_i2_s v(op);
        ggml_bitnet_mul_mat(params, &v.op);  // writes op's own dst data
        return true;
    }
};

class tl2_extra : public ggml::cpu::extra_buffer_type {
    bool supports_op(ggml_backend_dev_t, const ggml_tensor * op) override {
        const ggml_tensor * src1 = op->src[1];
        return op->op == GGML_OP_MUL_MAT && in_this_buffer(op->src[0]) && is_tl2_matrix(op->src[0]) &&
               src1->type == GGML_TYPE_F32 && (src1->buffer == nullptr || ggml_backend_buft_is_host(src1->buffer->buft));
    }
    ggml::cpu::tensor_traits * get_tensor_traits(const ggml_tensor * op) override {
        static tl2_traits traits;
        return op->op == GGML_OP_MUL_MAT && in_this_buffer(op->src[0]) ? &traits : nullptr;
    }
};

// the conversion in parallel over ranges of whole tiles (the 2B-4T shape: about a second more
// load time on 2 cores than TL2 as stored)
void set_tensor(ggml_backend_buffer_t, ggml_tensor * t, const void * data, size_t offset, size_t size) {
    GGML_ASSERT(is_tl2_matrix(t) && offset == 0 && size == ggml_nbytes(t));  // the loader sets a weight whole
    const int64_t rows  = t->ne[1];
    const int64_t tiles = (rows + TL_TILE_ROWS - 1) / TL_TILE_ROWS;
    const int64_t nth   = std::min<int64_t>(tiles, std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> workers;
    for (int64_t i = 0; i < nth; ++i) {
        const int64_t r0 = tiles*i/nth*TL_TILE_ROWS;
        const int64_t r1 = std::min(rows, tiles*(i + 1)/nth*TL_TILE_ROWS);
        workers.emplace_back(ggml_tl_to_i2_s, GGML_TYPE_TL2, data, t->data, t->ne[0], rows, r0, r1);
    }
    for (std::thread & w : workers) {
        w.join();
    }
}

const char * get_name(ggml_backend_buffer_type_t) {
    return "CPU_TL2_AS_I2_S";
}

ggml_backend_buffer_t alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer != nullptr) {
        buffer->buft              = buft;
        buffer->iface.set_tensor  = set_tensor;
        buffer->iface.get_tensor  = nullptr;  // the bytes are not the tensor's type any more
        buffer->iface.cpy_tensor  = nullptr;
    }
    return buffer;
}

size_t get_alignment(ggml_backend_buffer_type_t) {
    return ggml_backend_buft_get_alignment(ggml_backend_cpu_buffer_type());
}

size_t get_alloc_size(ggml_backend_buffer_type_t, const ggml_tensor * t) {
    return is_tl2_matrix(t) ? ggml_ternary_nbytes(GGML_TYPE_I2_S, t->ne[0], t->ne[1]) : ggml_nbytes(t);
}

}  // namespace

ggml_backend_buffer_type_t ggml_backend_cpu_tl2_as_i2_s_buffer_type(void) {
    static ggml_backend_buffer_type buft = {
        /* .iface   = */ {
            /* .get_name       = */ get_name,
            /* .alloc_buffer   = */ alloc_buffer,
            /* .get_alignment  = */ get_alignment,
            /* .get_max_size   = */ nullptr,
            /* .get_alloc_size = */ get_alloc_size,
            /* .is_host        = */ nullptr,
        },
        /* .device  = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context = */ new tl2_extra(),  // never freed, as ggml's own extra buffer types
    };
    return &buft;
}
