# Read by CTest after the discovered tests of boxmeter_deploy_tests (see
# tests/CMakeLists.txt): gives each of them the labels deploy and integration,
# so that both `ctest -L deploy` and `ctest -L integration` select them.
file(GLOB boxmeter_deploy_test_lists
  "${BOXMETER_DEPLOY_TESTS_DIR}/boxmeter_deploy_tests*_tests.cmake")
foreach(list_file IN LISTS boxmeter_deploy_test_lists)
  file(READ "${list_file}" text)
  string(REGEX MATCHALL "add_test\\(\\[=\\[[^]]+\\]=\\]" tests "${text}")
  foreach(test IN LISTS tests)
    string(REGEX REPLACE "^add_test\\(\\[=\\[(.*)\\]=\\]$" "\\1" name "${test}")
    set_tests_properties("${name}" PROPERTIES LABELS "deploy;integration")
  endforeach()
endforeach()
