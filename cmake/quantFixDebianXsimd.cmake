# Debian 12's libxsimd-dev (8.1.0-7) was built with ENABLE_XTL_COMPLEX, so its xsimd target links
# to `xtl`, but its xsimdConfig.cmake never looks for xtl. With no target of that name, CMake
# passes -lxtl to the linker, which fails. The headers only use xtl when XSIMD_ENABLE_XTL_COMPLEX
# is defined, which that target does not do, so the link item is dropped.
# Included after xsimd is found, by CMakeLists.txt and by the installed quantConfig.cmake.
get_target_property(quant_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
if("xtl" IN_LIST quant_xsimd_links AND NOT TARGET xtl)
  list(REMOVE_ITEM quant_xsimd_links xtl)
  set_target_properties(xsimd PROPERTIES INTERFACE_LINK_LIBRARIES "${quant_xsimd_links}")
endif()
unset(quant_xsimd_links)
