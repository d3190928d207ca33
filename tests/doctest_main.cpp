// The one main() of every test executable: the tests themselves never define
// DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
