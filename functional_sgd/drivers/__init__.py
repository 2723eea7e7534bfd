"""Host-side drivers around the compiled loop: chunks, checkpoints, a device mesh."""
