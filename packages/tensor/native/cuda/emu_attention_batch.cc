#include "attention_batch.cu"
