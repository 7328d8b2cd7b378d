{
  "variables": { "with_cuda%": "false", "cuda_obj%": "", "cuda_dev_obj%": "", "cuda_home%": "/usr/local/cuda", "portable%": "false", "march%": "x86-64-v2", "rpath_origin%": "false" },
  "targets": [
    {
      "target_name": "smallkv_tensor",
      "sources": ["native/addon.cc", "native/rope.cc", "native/attention.cc", "native/kv.cc", "native/topk.cc", "native/select.cc", "native/decoder.cc", "native/qgemm.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-O3", "-std=c++17", "-fopenmp"],
      "ldflags": ["-fopenmp"],
      "conditions": [
        ["portable=='true'",
          { "cflags_cc": ["-march=<(march)"], "defines": ["SMALLKV_PORTABLE=1"] },
          { "cflags_cc": ["-march=native"] }],
        ["rpath_origin=='true'",
          { "ldflags": ["-Wl,-rpath,'$$ORIGIN'"] }],
        ["with_cuda=='true'",
          { "defines": ["SMALLKV_WITH_CUDA=1"],
            "libraries": ["<(cuda_obj)", "<(cuda_home)/lib64/libcudart_static.a", "-ldl", "-lrt", "-lpthread"] },
          { "sources": ["native/cuda_stub.cc"] }]
      ]
    },
    {
      "target_name": "smallkv_cuda_emu",
      "sources": ["native/cuda/binding.cc", "native/cuda/emu.cc", "native/cuda/runtime_emu.cc",
                  "native/cuda/emu_dense.cc", "native/cuda/emu_attention.cc", "native/cuda/emu_kv.cc",
                  "native/cuda/emu_gemv.cc", "native/cuda/emu_attention_batch.cc", "native/cuda/emu_decode.cc",
                  "native/cuda/emu_policy.cc",
                  "native/cuda/emu_prefill.cc",
                  "native/cuda/emu_sample.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "SKV_EMU=1"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-O2", "-std=c++17"]
    }
  ],
  "conditions": [
    ["with_cuda=='true'", {
      "targets": [
        {
          "target_name": "smallkv_cuda",
          "sources": ["native/cuda/binding.cc"],
          "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
          "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
          "cflags_cc!": ["-fno-exceptions"],
          "cflags_cc": ["-O2", "-std=c++17"],
          "libraries": ["<(cuda_dev_obj)", "<(cuda_home)/lib64/libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
        }
      ]
    }]
  ]
}
