"""The CMake build and C++ source of the native runner live beside this file; see `build`, `targets`, `run`."""
