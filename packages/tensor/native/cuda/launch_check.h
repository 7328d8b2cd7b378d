// Shared by the kernel files and both runtimes (CUDA and emulator).
#pragma once

// The stream handle for 0 (compute) or 1 (copy).
void* skv_stream(int stream);
// After a launch: turns a launch error into SKV_EKERNEL with the kernel's name.
int skv_check_launch(const char* kernel);
// Records an argument error (SKV_EARG) and returns it.
int skv_arg_error(const char* message);
