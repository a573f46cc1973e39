"""Message I/O: bags, CSV logs, field paths, the signal spec, time alignment, windows."""
