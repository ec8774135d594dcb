# Runs at install time (install(SCRIPT) in deploy/CMakeLists.txt): installs
# the systemd units into DATADIR/boxmeter with their ExecStart= and
# ExecCondition= lines naming the binaries where this install puts them.
#
# The unit files in deploy/systemd/ are complete units for a /usr install
# (they say /usr/bin/boxmeter-...); here that prefix is replaced with the
# real BINDIR of this install, e.g. /usr/local/bin for the default prefix or
# the temporary prefix the tests install to. DESTDIR is not part of it: a
# package staged in DESTDIR runs from the prefix.
#
# Inputs (set by the install(CODE) before this script): BOXMETER_UNITS,
# BOXMETER_UNIT_SOURCE_DIR, BOXMETER_UNIT_STAGING_DIR, BOXMETER_INSTALL_BINDIR,
# BOXMETER_INSTALL_DATADIR; and CMake's CMAKE_INSTALL_PREFIX.

function(boxmeter_full_dir dir out)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "${CMAKE_INSTALL_PREFIX}/${dir}" PARENT_SCOPE)
  endif()
endfunction()

boxmeter_full_dir("${BOXMETER_INSTALL_BINDIR}" bindir)
boxmeter_full_dir("${BOXMETER_INSTALL_DATADIR}/boxmeter" destination)

# One staging directory per destination, so that two installs of the same
# build to different prefixes at once (parallel tests) do not mix.
string(MD5 key "$ENV{DESTDIR}${destination}")
set(staging "${BOXMETER_UNIT_STAGING_DIR}/${key}")
file(MAKE_DIRECTORY "${staging}")

foreach(unit IN LISTS BOXMETER_UNITS)
  file(READ "${BOXMETER_UNIT_SOURCE_DIR}/${unit}" text)
  string(REPLACE "/usr/bin/boxmeter-" "${bindir}/boxmeter-" text "${text}")
  file(WRITE "${staging}/${unit}" "${text}")
  # file(INSTALL) adds DESTDIR, logs, and records the file in
  # install_manifest.txt, as for every other installed file.
  file(INSTALL "${staging}/${unit}" DESTINATION "${destination}"
    FILE_PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
endforeach()
