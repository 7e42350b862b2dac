"""Training: the one loop (loop.py), its resume state (resume.py), numeric precision, multi-process
training and the allocator it runs on."""
