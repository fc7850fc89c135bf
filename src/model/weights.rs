//! safetensors loading by HF tensor names.
