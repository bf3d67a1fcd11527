#!/usr/bin/env node
// Formats (or with --check, only checks) Lua files with StyLua's WebAssembly build from npm
// (@johnnymorganz/stylua), configured by the repository's stylua.toml. StyLua ships no PyPI
// package and its binary is downloaded from GitHub at run time, which CI cannot do; this build
// is a plain npm dependency. Usage: node tools/stylua.cjs [--check] FILE_OR_DIR...
"use strict";

const fs = require("node:fs");
const path = require("node:path");

function loadStylua() {
    // pre-commit's node environment installs into its own prefix without setting NODE_PATH.
    const prefix = process.env.npm_config_prefix || process.env.NPM_CONFIG_PREFIX;
    const paths = prefix ? [path.join(prefix, "lib", "node_modules")] : [];
    return require(require.resolve("@johnnymorganz/stylua", { paths: [...module.paths, ...paths] }));
}

// stylua.toml is flat `key = value` lines; values are enum member names, numbers or booleans.
function loadConfig(stylua, file) {
    const config = stylua.Config.new();
    const enums = {
        syntax: stylua.LuaVersion,
        line_endings: stylua.LineEndings,
        indent_type: stylua.IndentType,
        quote_style: stylua.QuoteStyle,
        call_parentheses: stylua.CallParenType,
        collapse_simple_statement: stylua.CollapseSimpleStatement,
        space_after_function_names: stylua.SpaceAfterFunctionNames,
        block_newline_gaps: stylua.BlockNewlineGaps,
    };
    for (const raw of fs.readFileSync(file, "utf8").split("\n")) {
        const line = raw.replace(/#.*$/, "").trim();
        if (!line) continue;
        const match = /^([a-z_]+)\s*=\s*(.+)$/.exec(line);
        if (!match) throw new Error(`${file}: cannot read line ${JSON.stringify(raw)}`);
        const [, key, text] = match;
        const value = JSON.parse(text);
        if (!(key in config) && !(key in enums)) throw new Error(`${file}: unknown key ${key}`);
        if (key in enums) {
            if (!(value in enums[key])) throw new Error(`${file}: ${key}: unknown value ${JSON.stringify(value)}`);
            config[key] = enums[key][value];
        } else {
            config[key] = value;
        }
    }
    return config;
}

function luaFiles(target) {
    if (!fs.statSync(target).isDirectory()) return [target];
    return fs
        .readdirSync(target, { recursive: true })
        .filter((name) => name.endsWith(".lua"))
        .map((name) => path.join(target, name))
        .sort();
}

function main(argv) {
    const check = argv.includes("--check");
    const targets = argv.filter((arg) => arg !== "--check");
    if (targets.length === 0) {
        console.error("usage: node tools/stylua.cjs [--check] FILE_OR_DIR...");
        return 2;
    }
    const stylua = loadStylua();
    const configFile = path.join(__dirname, "..", "stylua.toml");
    let unformatted = 0;
    for (const file of targets.flatMap(luaFiles)) {
        const source = fs.readFileSync(file, "utf8");
        let formatted;
        try {
            // formatCode takes ownership of (and frees) the config it is given: one per file.
            formatted = stylua.formatCode(source, loadConfig(stylua, configFile), undefined, stylua.OutputVerification.Full);
        } catch (error) {
            console.error(`${file}: ${error}`);
            return 1;
        }
        if (formatted === source) continue;
        unformatted += 1;
        if (check) {
            console.error(`${file}: not formatted (run: node tools/stylua.cjs ${file})`);
        } else {
            fs.writeFileSync(file, formatted);
            console.log(`formatted ${file}`);
        }
    }
    return check && unformatted > 0 ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
