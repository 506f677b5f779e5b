"""Video data without torch: decoding and preprocessing (numpy uint8 out), the parallel loader, the frame
cache, dataset adapters, file discovery and synthetic videos."""
