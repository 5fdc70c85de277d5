// bitnet-tools: check a model's header and tensor table against what the graph will assume,
// before any of it is used. llama.cpp trusts these values and GGML_ASSERTs on them deep inside
// load_hparams or in the middle of a compute (block_count 0, odd rope dimensions, a negative
// epsilon, a norm stored as a ternary type ...), which takes the whole process down: the Python
// program, llama-server, every tool. Here each is refused with one line that names the key or
// tensor and the fix; llama_model_load reports it as any other load error.
#include "llama-bitnet-validate.h"

#include "llama-arch.h"
#include "llama-hparams.h"
#include "llama-impl.h"
#include "llama-model-loader.h"
#include "llama-mmap.h"
#include "llama-model.h"
#include "unicode.h"

#include "gguf.h"

#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <unistd.h>

// longest context a header may declare (llama.cpp's largest published models say 10M)
static constexpr uint32_t MAX_CONTEXT_LENGTH = 1u << 26;
// widest embedding / FFN / head count we accept: far beyond any model, small enough that sizes
// computed from them in int32 or int64 cannot overflow
static constexpr uint32_t MAX_WIDTH = 1u << 20;
// largest per-tensor ternary scale we accept: trained weights' absmean is 1e-3 .. 10, and much
// larger scales overflow float32 activations within a few layers (every logit then reads 0)
static constexpr float MAX_SCALE = 1e6f;
// bytes after a ternary tensor's codes: its float32 scale, padded (ggml-bitnet.h)
static constexpr size_t TERNARY_TAIL = 32;

static const char * FIX = "the file is damaged or was written by a broken converter: convert the checkpoint again";

[[noreturn]] static void refuse(const std::string & what) {
    throw std::runtime_error(what + ": " + FIX);
}

static bool is_ours(ggml_type type) {
    return type == GGML_TYPE_I2_S || type == GGML_TYPE_TL1 || type == GGML_TYPE_TL2;
}

// blk.N.<rest>: N, or -1 for tensors outside the layers
static long layer_of(const std::string & name, std::string * rest = nullptr) {
    if (name.rfind("blk.", 0) != 0) {
        return -1;
    }
    char * end = nullptr;
    const long il = std::strtol(name.c_str() + 4, &end, 10);
    if (end == name.c_str() + 4 || *end != '.' || il < 0) {
        return -1;
    }
    if (rest) {
        *rest = end + 1;
    }
    return il;
}

static void check_counts(llama_model_loader & ml, uint32_t & n_layer) {
    const std::string block_count = ml.llm_kv(LLM_KV_BLOCK_COUNT);
    n_layer = 0;
    ml.get_key(LLM_KV_BLOCK_COUNT, n_layer);
    if (n_layer == 0 || n_layer > LLAMA_MAX_LAYERS) {
        refuse(format("%s = %u, but a model has 1 to %d layers", block_count.c_str(), n_layer, LLAMA_MAX_LAYERS));
    }
    long last = -1;
    for (const auto & [name, w] : ml.weights_map) {
        last = std::max(last, layer_of(name));
    }
    if (last >= 0 && (uint32_t) last + 1 != n_layer) {
        refuse(format("%s = %u, but the tensors hold %ld layers (blk.0 .. blk.%ld)", block_count.c_str(), n_layer, last + 1, last));
    }

    uint32_t n_ctx = 0;
    if (ml.get_key(LLM_KV_CONTEXT_LENGTH, n_ctx, false) && (n_ctx == 0 || n_ctx > MAX_CONTEXT_LENGTH)) {
        refuse(format("%s = %u, outside 1 .. %u", ml.llm_kv(LLM_KV_CONTEXT_LENGTH).c_str(), n_ctx, MAX_CONTEXT_LENGTH));
    }
}

// head counts divide the width, and rope rotates an even number of dimensions within a head
static void check_attention(llama_model_loader & ml, uint32_t n_layer) {
    uint32_t n_embd = 0;
    if (!ml.get_key(LLM_KV_EMBEDDING_LENGTH, n_embd, false)) {
        return;  // not a transformer with attention (llama.cpp says what is missing)
    }
    if (n_embd == 0 || n_embd > MAX_WIDTH) {
        refuse(format("%s = %u, outside 1 .. %u", ml.llm_kv(LLM_KV_EMBEDDING_LENGTH).c_str(), n_embd, MAX_WIDTH));
    }

    std::array<uint32_t, LLAMA_MAX_LAYERS> n_ff{};
    if (ml.get_key_or_arr(LLM_KV_FEED_FORWARD_LENGTH, n_ff, n_layer, false)) {
        for (uint32_t il = 0; il < n_layer; ++il) {
            if (n_ff[il] > MAX_WIDTH) {
                refuse(format("%s = %u (layer %u), above %u", ml.llm_kv(LLM_KV_FEED_FORWARD_LENGTH).c_str(), n_ff[il], il, MAX_WIDTH));
            }
        }
    }

    std::array<uint32_t, LLAMA_MAX_LAYERS> n_head{};
    if (!ml.get_key_or_arr(LLM_KV_ATTENTION_HEAD_COUNT, n_head, n_layer, false)) {
        return;
    }
    std::array<uint32_t, LLAMA_MAX_LAYERS> n_head_kv = n_head;
    ml.get_key_or_arr(LLM_KV_ATTENTION_HEAD_COUNT_KV, n_head_kv, n_layer, false);

    uint32_t head_k = 0;
    const bool has_head_k = ml.get_key(LLM_KV_ATTENTION_KEY_LENGTH, head_k, false);
    uint32_t n_rot = 0;
    const bool has_rot = ml.get_key(LLM_KV_ROPE_DIMENSION_COUNT, n_rot, false);

    const std::string head_count = ml.llm_kv(LLM_KV_ATTENTION_HEAD_COUNT);
    const std::string head_count_kv = ml.llm_kv(LLM_KV_ATTENTION_HEAD_COUNT_KV);
    for (uint32_t il = 0; il < n_layer; ++il) {
        const uint32_t h = n_head[il], hkv = n_head_kv[il];
        if (h == 0) {
            if (hkv != 0) {
                refuse(format("%s = 0 but %s = %u (layer %u)", head_count.c_str(), head_count_kv.c_str(), hkv, il));
            }
            continue;  // a layer without attention (hybrid models)
        }
        if (h > n_embd) {
            refuse(format("%s = %u (layer %u), more heads than %s = %u", head_count.c_str(), h, il,
                          ml.llm_kv(LLM_KV_EMBEDDING_LENGTH).c_str(), n_embd));
        }
        if (hkv == 0 || hkv > h || h % hkv != 0) {
            refuse(format("%s = %u does not divide %s = %u (layer %u)", head_count_kv.c_str(), hkv, head_count.c_str(), h, il));
        }
        if (!has_head_k && n_embd % h != 0) {
            refuse(format("%s = %u does not divide %s = %u (layer %u)", head_count.c_str(), h,
                          ml.llm_kv(LLM_KV_EMBEDDING_LENGTH).c_str(), n_embd, il));
        }
        const uint32_t head = has_head_k ? head_k : n_embd / h;
        if (head == 0 || head > MAX_WIDTH) {
            refuse(format("%s = %u, outside 1 .. %u", ml.llm_kv(LLM_KV_ATTENTION_KEY_LENGTH).c_str(), head, MAX_WIDTH));
        }
        // without the key, llama.cpp rotates the whole head
        const uint32_t rot = has_rot ? n_rot : head;
        if (rot == 0 || rot % 2 != 0 || rot > head) {
            refuse(format("%s = %u, but rope needs an even count from 2 to the head size %u",
                          has_rot ? ml.llm_kv(LLM_KV_ROPE_DIMENSION_COUNT).c_str() : "the head size", rot, head));
        }
    }
}

static void check_positive_float(llama_model_loader & ml, llm_kv kid) {
    float v = 0.0f;
    if (ml.get_key(kid, v, false) && !(std::isfinite(v) && v > 0.0f)) {
        refuse(format("%s = %g, but it must be a finite number above 0", ml.llm_kv(kid).c_str(), v));
    }
}

// bitnet.cpp's TL1/TL2 files (its file types 38/39, which are MXFP4_MOE/NVFP4 upstream: so only
// in a BitNet model) hold weights arranged for kernels generated for one model; its tensor type
// 39 is MXFP4 here, and such a file would load as garbage
static void check_not_bitnet_cpp_tl(llama_model_loader & ml) {
    uint32_t ftype = 0;
    if (ml.get_arch_name().rfind("bitnet", 0) == 0 && ml.get_key(LLM_KV_GENERAL_FILE_TYPE, ftype, false) &&
        (ftype == 38 || ftype == 39)) {
        const bool tl1 = ftype == 38;
        throw std::runtime_error(format("this is a bitnet.cpp %s file, tied to kernels generated for one model: convert "
                                        "the checkpoint with 'bitnet convert --outtype %s' (or i2_s)",
                                        tl1 ? "TL1" : "TL2", tl1 ? "tl1" : "tl2"));
    }
}

// the ggml types each tensor's role can take: the CPU backend aborts on the others mid-compute
static void check_tensor_types(llama_model_loader & ml) {
    ggml_type ours = GGML_TYPE_COUNT;
    std::string ours_name;
    for (const auto & [name, w] : ml.weights_map) {
        const ggml_tensor * t = w.tensor;
        const int n_dims = ggml_n_dims(t);
        if (n_dims == 1 && t->type != GGML_TYPE_F32) {
            refuse(format("tensor '%s' is %s, but 1-D tensors (norms, biases, scales) must be F32",
                          name.c_str(), ggml_type_name(t->type)));
        }
        if (!is_ours(t->type)) {
            continue;
        }
        std::string rest;
        const bool linear = layer_of(name, &rest) >= 0 && rest.find("norm") == std::string::npos &&
                            rest.size() > 7 && rest.compare(rest.size() - 7, 7, ".weight") == 0;
        if (!linear || n_dims != 2) {
            refuse(format("tensor '%s' is %s, a ternary type that only the layers' linear weights can take",
                          name.c_str(), ggml_type_name(t->type)));
        }
        // one file, one ternary layout: a tensor relabelled from I2_S to TL1 has the same size
        // and would run as garbage
        if (ours == GGML_TYPE_COUNT) {
            ours = t->type;
            ours_name = name;
        } else if (t->type != ours) {
            refuse(format("tensor '%s' is %s but '%s' is %s: a file holds one ternary type", name.c_str(),
                          ggml_type_name(t->type), ours_name.c_str(), ggml_type_name(ours)));
        }
    }

    // our file types name their ternary type
    uint32_t ftype = 0;
    if (ours != GGML_TYPE_COUNT && ml.get_key(LLM_KV_GENERAL_FILE_TYPE, ftype, false)) {
        const ggml_type said = ftype == LLAMA_FTYPE_MOSTLY_I2_S ? GGML_TYPE_I2_S
                             : ftype == LLAMA_FTYPE_MOSTLY_TL1  ? GGML_TYPE_TL1
                             : ftype == LLAMA_FTYPE_MOSTLY_TL2  ? GGML_TYPE_TL2 : GGML_TYPE_COUNT;
        if (said != GGML_TYPE_COUNT && said != ours) {
            refuse(format("general.file_type says %s but tensor '%s' is %s", ggml_type_name(said),
                          ours_name.c_str(), ggml_type_name(ours)));
        }
    }
}

// one float of a tensor's data, read from its file (the data are not mapped yet)
static float read_f32(llama_model_loader & ml, const llama_model_loader::llama_tensor_weight & w, size_t at) {
    float v = 0.0f;
    llama_file * file = ml.files.at(w.idx).get();
    file->seek(w.offs + at, SEEK_SET);
    file->read_raw(&v, sizeof(v));
    return v;
}

// per-tensor scales multiply every output of their layer: NaN/inf/0 gives wrong logits silently
static void check_scales(llama_model_loader & ml) {
    if (ml.files.empty()) {
        return;  // tensor data come from the caller, not a file
    }
    for (const auto & [name, w] : ml.weights_map) {
        const ggml_tensor * t = w.tensor;
        float scale;
        if (is_ours(t->type)) {
            // the first float of the tail
            const size_t codes = ggml_ternary_nbytes(t->type, t->ne[0], ggml_nrows(t)) - TERNARY_TAIL;
            scale = read_f32(ml, w, codes);
        } else if (t->type == GGML_TYPE_F32 && ggml_nelements(t) == 1 && name.size() > 6 &&
                   name.compare(name.size() - 6, 6, ".scale") == 0) {
            scale = read_f32(ml, w, 0);  // upstream bitnet: a separate scale tensor per weight
        } else {
            continue;
        }
        if (!std::isfinite(scale) || scale == 0.0f || std::fabs(scale) > MAX_SCALE) {
            refuse(format("tensor '%s' has scale %g, but a ternary weight's scale is non-zero and within +-%g",
                          name.c_str(), scale, MAX_SCALE));
        }
    }
}

// the vocabulary: llama.cpp asserts that no token string repeats, and its tokenizers look every
// byte up (byte fallback) with unordered_map::at, whose exception ends the process at tokenize time
static void check_vocab(llama_model_loader & ml) {
    const gguf_context * meta = ml.metadata;
    const int64_t kid = gguf_find_key(meta, "tokenizer.ggml.tokens");
    if (kid < 0 || gguf_get_kv_type(meta, kid) != GGUF_TYPE_ARRAY || gguf_get_arr_type(meta, kid) != GGUF_TYPE_STRING) {
        return;  // llama.cpp says what is missing
    }
    const size_t n = gguf_get_arr_n(meta, kid);
    std::unordered_map<std::string, size_t> ids;
    ids.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        const auto [at, fresh] = ids.emplace(gguf_get_arr_str(meta, kid, i), i);
        if (!fresh) {
            refuse(format("tokenizer.ggml.tokens holds '%s' twice (ids %zu and %zu)", at->first.c_str(), at->second, i));
        }
    }

    const int64_t mid = gguf_find_key(meta, "tokenizer.ggml.model");
    const std::string model = mid >= 0 && gguf_get_kv_type(meta, mid) == GGUF_TYPE_STRING ? gguf_get_val_str(meta, mid) : "";
    // the two tokenizers whose vocabularies always hold every byte (sentencepiece with byte
    // fallback; GPT-2's byte-level BPE); UGM and WPM vocabularies may lack bytes by design
    for (int b = 0; b < 256 && (model == "llama" || model == "gpt2"); ++b) {
        const std::string hex = format("<0x%02X>", b);
        const bool found = model == "llama" ? ids.count(hex) || ids.count(std::string(1, (char) b))
                                            : ids.count(unicode_byte_to_utf8((uint8_t) b)) > 0;
        if (!found) {
            refuse(format("tokenizer.ggml.tokens has no token for byte %s, which the '%s' tokenizer needs", hex.c_str(), model.c_str()));
        }
    }
}

void llama_bitnet_validate(llama_model_loader & ml) {
    check_not_bitnet_cpp_tl(ml);
    uint32_t n_layer = 0;
    check_counts(ml, n_layer);
    check_attention(ml, n_layer);
    check_positive_float(ml, LLM_KV_ATTENTION_LAYERNORM_RMS_EPS);
    check_positive_float(ml, LLM_KV_ATTENTION_LAYERNORM_EPS);
    check_positive_float(ml, LLM_KV_ROPE_FREQ_BASE);
    check_tensor_types(ml);
    check_scales(ml);
    check_vocab(ml);
}

std::string llama_bitnet_check_context(const llama_model & model, const llama_context_params & params) {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
    const llama_hparams & hp = model.hparams;
    const uint64_t n_ctx = params.n_ctx ? params.n_ctx : hp.n_ctx_train;
    double per_token = 0;  // bytes of K and V per token over all layers (an upper bound: SWA layers hold less)
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        per_token += ggml_row_size(params.type_k, hp.n_embd_k_gqa(il)) + ggml_row_size(params.type_v, hp.n_embd_v_gqa(il));
    }
    const double need = per_token * n_ctx;
    const double have = (double) sysconf(_SC_PHYS_PAGES) * (double) sysconf(_SC_PAGE_SIZE);
    if (have > 0 && need > have) {
        return format("a context of %llu tokens needs %.1f GiB of KV cache, more than this machine's %.1f GiB of memory: "
                      "ask for a smaller context (n_ctx, -c)", (unsigned long long) n_ctx, need / (1u << 30), have / (1u << 30));
    }
#endif
    GGML_UNUSED(model);
    GGML_UNUSED(params);
    return "";
}
