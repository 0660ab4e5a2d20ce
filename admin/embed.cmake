# embed.cmake - turn the dashboard's static files into a C source file
# (cmake -P, run by admin/CMakeLists.txt at build time).
#
#   cmake -DOUT=file.c -DDIR=admin/dashboard -DFILES=index.html,app.js -P embed.cmake
#
# Writes `const struct admin_asset admin_assets[]` (admin_int.h): each file's
# name, its bytes as a C array, and its length.
string(REPLACE "," ";" FILES "${FILES}")
set(body "/* Generated from admin/dashboard by admin/embed.cmake: do not edit. */\n")
string(APPEND body "#include \"admin_int.h\"\n\n")
set(table "")
set(i 0)
foreach(f IN LISTS FILES)
  file(READ "${DIR}/${f}" hex HEX)
  string(LENGTH "${hex}" hexlen)
  math(EXPR len "${hexlen} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f],0x[0-9a-f][0-9a-f])" "\\1\n" bytes "${bytes}")
  string(APPEND body "static const unsigned char asset_${i}[] = {\n${bytes}0x00};\n\n")
  string(APPEND table "    {\"${f}\", asset_${i}, ${len}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "const struct admin_asset admin_assets[] = {\n${table}};\n")
string(APPEND body "const size_t admin_n_assets = ${i};\n")
file(WRITE "${OUT}.tmp" "${body}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
