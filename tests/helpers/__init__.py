"""Code the tests share (fuzz strategies and counts) and modules tests load by name (a toy task, a DDP
probe callback): not collected as tests."""
