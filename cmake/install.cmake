# Install rules, CMake package and pkg-config file (owned by the packaging work).
