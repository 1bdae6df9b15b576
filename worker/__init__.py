"""gridsweep worker: pure training code and the HTTP claim loop."""
