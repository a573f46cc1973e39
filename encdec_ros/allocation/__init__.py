"""Control allocation: effectiveness matrices, allocators and their evaluation."""
