# Runs one compile-fail test (see tests/CMakeLists.txt):
#
#   cmake -DCXX=<compiler> -DSOURCE=<file.cpp> "-DINCLUDE_DIRS=<dir>|<dir>..." -P quantCompileFail.cmake
#
# A SOURCE named ok_*.cpp passes if it compiles. Any other SOURCE passes if it does not compile
# and the compiler's output matches the regex on its first line, `// EXPECT: <regex>` (CMake regex
# syntax, searched anywhere in the output). Diagnostics are produced with LC_ALL=C, so GCC quotes
# with plain ' rather than typographic quotes.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS CXX SOURCE INCLUDE_DIRS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "quantCompileFail.cmake: -D${var}=... is missing")
  endif()
endforeach()

cmake_path(GET SOURCE FILENAME file_name)
if(file_name MATCHES "^ok_")
  set(expect_success TRUE)
else()
  set(expect_success FALSE)
  file(READ "${SOURCE}" head LIMIT 1000)
  if(NOT head MATCHES "^// EXPECT: ([^\r\n]+)")
    message(FATAL_ERROR "${SOURCE}: the first line must be `// EXPECT: <regex>`")
  endif()
  string(STRIP "${CMAKE_MATCH_1}" expected)
endif()

string(REPLACE "|" ";" include_dirs "${INCLUDE_DIRS}")
list(TRANSFORM include_dirs PREPEND -I)
set(command ${CXX} -std=c++20 -fsyntax-only ${include_dirs} ${SOURCE})
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env LC_ALL=C ${command}
  RESULT_VARIABLE result
  OUTPUT_VARIABLE output
  ERROR_VARIABLE output)

list(JOIN command " " command_line)
if(expect_success)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${file_name} should compile but does not:\n${command_line}\n${output}")
  endif()
elseif(result EQUAL 0)
  message(FATAL_ERROR "${file_name} should not compile but does:\n${command_line}\n${output}")
elseif(NOT output MATCHES "${expected}")
  message(FATAL_ERROR "${file_name} fails to compile as it should, but its diagnostics do not "
                      "match `${expected}`:\n${command_line}\n${output}")
endif()
