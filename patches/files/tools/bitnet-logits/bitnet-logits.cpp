// bitnet-tools: evaluate a given list of token ids with a GGUF model and write the logits of
// every position as float32 (row-major: n_tokens rows of n_vocab values, host byte order).
//
//   bitnet-logits -m MODEL.gguf [-t THREADS] [-b BATCH] [-c CTX] [-o FILE] [--kv-f16] [--fa] [-v] TOKEN...
//
// The tokens are evaluated from position 0 in batches of BATCH (default: all at once, which
// exercises the GEMM kernels; -b 1 evaluates token by token through the GEMV kernels). The KV
// cache is float32 and flash attention is off unless asked for, so that attention adds only
// float32 rounding to what the matmul kernels compute. Output goes to FILE, or to stdout when
// FILE is "-" or not given. The shape is printed on stderr: "n_tokens n_vocab".
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static void usage(const char * argv0) {
    std::fprintf(stderr,
        "usage: %s -m MODEL.gguf [-t THREADS] [-b BATCH] [-c CTX] [-o FILE] [--kv-f16] [--fa] [--no-repack] [-v] TOKEN...\n"
        "  writes n_tokens x n_vocab float32 logits to FILE (default: stdout)\n", argv0);
}

static bool parse_int(const char * s, long lo, long hi, long * out) {
    char * end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

static void quiet_log(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    std::string model_path, out_path = "-";
    long n_threads = 1, n_batch = 0, n_ctx = 0;
    bool kv_f16 = false, flash_attn = false, repack = true, verbose = false;
    std::vector<llama_token> tokens;

    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        long v = 0;
        if (a == "-h" || a == "--help") {
            usage(argv[0]);
            return 0;
        } else if ((a == "-m" || a == "--model") && has_value) {
            model_path = argv[++i];
        } else if ((a == "-o" || a == "--output") && has_value) {
            out_path = argv[++i];
        } else if ((a == "-t" || a == "--threads") && has_value && parse_int(argv[i + 1], 1, 1024, &v)) {
            n_threads = v; ++i;
        } else if ((a == "-b" || a == "--batch") && has_value && parse_int(argv[i + 1], 1, 1 << 20, &v)) {
            n_batch = v; ++i;
        } else if ((a == "-c" || a == "--ctx") && has_value && parse_int(argv[i + 1], 1, 1 << 24, &v)) {
            n_ctx = v; ++i;
        } else if (a == "--kv-f16") {
            kv_f16 = true;
        } else if (a == "--fa") {
            flash_attn = true;
        } else if (a == "--no-repack") {  // weights as stored (no extra buffer type, e.g. TL2 as I2_S)
            repack = false;
        } else if (a == "-v" || a == "--verbose") {
            verbose = true;
        } else if (parse_int(argv[i], 0, 0x7fffffff, &v)) {
            tokens.push_back((llama_token) v);
        } else {
            std::fprintf(stderr, "bitnet-logits: bad argument '%s'\n", argv[i]);
            usage(argv[0]);
            return 2;
        }
    }
    if (model_path.empty() || tokens.empty()) {
        usage(argv[0]);
        return 2;
    }
    const int n_tokens = (int) tokens.size();
    if (n_batch == 0 || n_batch > n_tokens) {
        n_batch = n_tokens;
    }
    if (n_ctx == 0) {
        n_ctx = n_tokens;
    }
    if (n_ctx < n_tokens) {
        std::fprintf(stderr, "bitnet-logits: context %ld is shorter than the %d tokens\n", n_ctx, n_tokens);
        return 2;
    }

    if (!verbose) {
        llama_log_set(quiet_log, nullptr);
    }
    llama_backend_init();

    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    mparams.use_extra_bufts = repack;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (model == nullptr) {
        std::fprintf(stderr, "bitnet-logits: cannot load %s\n", model_path.c_str());
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    for (llama_token t : tokens) {
        if (t >= n_vocab) {
            std::fprintf(stderr, "bitnet-logits: token %d is outside the vocabulary (%d tokens)\n", t, n_vocab);
            llama_model_free(model);
            return 2;
        }
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx           = (uint32_t) n_ctx;
    cparams.n_batch         = (uint32_t) n_batch;
    cparams.n_ubatch        = (uint32_t) n_batch;
    cparams.n_seq_max       = 1;
    cparams.n_threads       = (int32_t) n_threads;
    cparams.n_threads_batch = (int32_t) n_threads;
    cparams.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cparams.type_k          = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cparams.type_v          = kv_f16 ? GGML_TYPE_F16 : GGML_TYPE_F32;
    cparams.no_perf         = true;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (ctx == nullptr) {
        std::fprintf(stderr, "bitnet-logits: cannot create a context for %s\n", model_path.c_str());
        llama_model_free(model);
        return 1;
    }

    std::vector<float> logits((size_t) n_tokens * n_vocab);
    llama_batch batch = llama_batch_init((int32_t) n_batch, 0, 1);
    int rc = 0;
    for (int i0 = 0; i0 < n_tokens && rc == 0; i0 += (int) n_batch) {
        const int nb = n_tokens - i0 < n_batch ? n_tokens - i0 : (int) n_batch;
        batch.n_tokens = nb;
        for (int j = 0; j < nb; ++j) {
            batch.token[j]     = tokens[i0 + j];
            batch.pos[j]       = i0 + j;
            batch.n_seq_id[j]  = 1;
            batch.seq_id[j][0] = 0;
            batch.logits[j]    = 1;
        }
        if (llama_decode(ctx, batch) != 0) {
            std::fprintf(stderr, "bitnet-logits: llama_decode failed at token %d\n", i0);
            rc = 1;
            break;
        }
        for (int j = 0; j < nb; ++j) {
            const float * row = llama_get_logits_ith(ctx, j);
            if (row == nullptr) {
                std::fprintf(stderr, "bitnet-logits: no logits for token %d\n", i0 + j);
                rc = 1;
                break;
            }
            std::memcpy(logits.data() + (size_t)(i0 + j) * n_vocab, row, sizeof(float) * n_vocab);
        }
    }
    llama_batch_free(batch);

    if (rc == 0) {
        FILE * f = out_path == "-" ? stdout : std::fopen(out_path.c_str(), "wb");
        if (f == nullptr) {
            std::fprintf(stderr, "bitnet-logits: cannot write %s\n", out_path.c_str());
            rc = 1;
        } else {
            if (std::fwrite(logits.data(), sizeof(float), logits.size(), f) != logits.size() || std::fflush(f) != 0) {
                std::fprintf(stderr, "bitnet-logits: writing %s failed\n", out_path.c_str());
                rc = 1;
            }
            if (f != stdout) {
                std::fclose(f);
            }
            if (rc == 0) {
                std::fprintf(stderr, "%d %d\n", n_tokens, n_vocab);
            }
        }
    }

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
