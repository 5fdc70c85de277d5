// bitnet-tools: refuse a model whose header or tensor table would make llama.cpp abort or compute
// garbage (see llama-bitnet-validate.cpp); throws std::runtime_error with one line naming the cause
#pragma once

#include "llama.h"

#include <string>

struct llama_model_loader;

void llama_bitnet_validate(llama_model_loader & ml);

// why a context with these parameters cannot be made on this machine ("" when it can): a KV cache
// larger than physical memory would be allocated and cleared (page by page) before anything fails
std::string llama_bitnet_check_context(const llama_model & model, const llama_context_params & params);
