#include "sample.cu"
