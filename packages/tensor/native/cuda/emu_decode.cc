#include "decode.cu"
