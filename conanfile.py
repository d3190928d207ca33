import os

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy

required_conan_version = ">=2.0"


class QuantConan(ConanFile):
    """Conan 2 recipe for quant, a header-only library.

    The package matches `cmake --install`: the same include/quant/ tree, and consumers do
    find_package(quant) and link quant::quant.
    """

    name = "quant"
    version = "0.1.0"
    license = "MIT"
    description = "Header-only C++20 weight quantization for neural networks"
    topics = ("quantization", "neural-networks", "simd", "header-only")
    package_type = "header-library"  # also makes the package_id independent of the settings
    settings = "os", "arch", "compiler", "build_type"  # for validate() only
    exports_sources = "include/*", "LICENSE"
    no_copy_source = True

    def requirements(self):
        self.requires("xsimd/[>=8.1.0]")
        # Only quant/io/fmt.hpp uses {fmt}; the CMake package leaves it to the users of that
        # header, but as a Conan requirement it reaches every consumer.
        self.requires("fmt/[>=9.1.0]")

    def validate(self):
        check_min_cppstd(self, 20)

    def package(self):
        copy(self, "LICENSE", src=self.source_folder, dst=os.path.join(self.package_folder, "licenses"))
        copy(self, "*", src=os.path.join(self.source_folder, "include"),
             dst=os.path.join(self.package_folder, "include"))

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", "quant")
        self.cpp_info.set_property("cmake_target_name", "quant::quant")
