"""The RPC harness: an emulated Cortex-A device behind a real TVM tracker, and its client."""
