// Deploy, with containers: the Dockerfile, the compose file and the
// Kubernetes example, checked without a container engine (none runs in CI):
// the build stage runs the very scripts CI runs, the runtime stage's package
// list covers every shared library the binaries load, the compose file keeps
// the stats API inside sing-box's network namespace, every config in them is
// one the binaries accept, and the two scripts the image adds (the health
// check and the users-changed hook) do what they say, run here for real.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "config.h"
#include "process.h"

namespace boxmeter::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Json = nlohmann::json;

const std::string kSourceDir = BOXMETER_SOURCE_DIR;
const std::string kDockerDir = kSourceDir + "/deploy/docker";

std::string Source(const std::string& relative) {
  std::string text = ReadFile(kSourceDir + "/" + relative);
  if (text.empty()) throw std::runtime_error("cannot read " + relative);
  return text;
}

struct CommandResult {
  int code;
  std::string output;
};

CommandResult RunProgram(const std::vector<std::string>& argv,
                         std::map<std::string, std::string> env = {},
                         std::chrono::milliseconds timeout = 60s) {
  Process::Options options;
  options.argv = argv;
  options.env = std::move(env);
  CommandResult result;
  result.code = RunCommand(options, timeout, &result.output);
  return result;
}

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// --- The Dockerfile, read as Docker reads it ---------------------------------

struct Instruction {
  std::string keyword;  // upper case: FROM, RUN, COPY, ...
  std::string args;     // the rest, continuation lines joined
};

struct Stage {
  std::string base;  // FROM's image
  std::vector<Instruction> instructions;

  std::vector<std::string> All(const std::string& keyword) const {
    std::vector<std::string> args;
    for (const Instruction& i : instructions) {
      if (i.keyword == keyword) args.push_back(i.args);
    }
    return args;
  }
  std::string Joined(const std::string& keyword) const {
    std::string text;
    for (const std::string& args : All(keyword)) text += args + "\n";
    return text;
  }
};

// Stages by name (FROM ... AS name), in a Dockerfile without parser
// directives beyond `# syntax`.
std::map<std::string, Stage> ParseDockerfile(const std::string& text) {
  std::map<std::string, Stage> stages;
  Stage* current = nullptr;
  std::istringstream in(text);
  std::string line;
  std::string logical;
  auto flush = [&] {
    static const std::regex kInstruction(R"(^\s*([A-Za-z]+)\s+(.*)$)");
    std::smatch match;
    if (!std::regex_match(logical, match, kInstruction)) {
      logical.clear();
      return;
    }
    std::string keyword = match[1];
    std::transform(keyword.begin(), keyword.end(), keyword.begin(), ::toupper);
    std::string args = match[2];
    logical.clear();
    if (keyword == "FROM") {
      static const std::regex kFrom(R"(^(\S+)\s+[Aa][Ss]\s+(\S+)\s*$)");
      std::smatch from;
      if (!std::regex_match(args, from, kFrom)) {
        throw std::runtime_error("a FROM without AS: " + args);
      }
      current = &stages[from[2]];
      current->base = from[1];
      return;
    }
    if (current == nullptr) throw std::runtime_error(keyword + " before FROM");
    current->instructions.push_back({keyword, args});
  };
  while (std::getline(in, line)) {
    std::string trimmed = std::regex_replace(line, std::regex(R"(^\s+)"), "");
    if (trimmed.starts_with("#")) continue;  // comments, also inside RUN
    if (!line.empty() && line.back() == '\\') {
      line.pop_back();
      logical += line + " ";
      continue;
    }
    logical += line;
    flush();
  }
  flush();
  return stages;
}

class DockerfileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    stages_ = ParseDockerfile(Source("deploy/docker/Dockerfile"));
    for (std::string name : {"build", "boxmeter", "sing-box-build",
                             "sing-box-runtime", "sing-box"}) {
      ASSERT_EQ(stages_.count(name), 1u) << "no stage " << name;
    }
  }
  const Stage& stage(const std::string& name) { return stages_.at(name); }

  std::map<std::string, Stage> stages_;
};

// CI (.ci/run) installs with scripts/install-deps.sh and builds with
// scripts/build.sh (through scripts/test.sh); the image's build stage runs
// the same two scripts, so CI exercises what the image does.
TEST_F(DockerfileTest, BuildStageRunsTheScriptsCiRuns) {
  const Stage& build = stage("build");
  EXPECT_EQ(build.base, "debian:12");
  std::string runs = build.Joined("RUN");
  EXPECT_TRUE(Has(runs, "scripts/install-deps.sh build")) << runs;
  EXPECT_TRUE(Has(runs, "scripts/build.sh")) << runs;
  EXPECT_TRUE(Has(runs, "cmake --install")) << runs;

  std::string ci = Source(".ci/run");
  EXPECT_TRUE(Has(ci, "scripts/install-deps.sh")) << ci;
  EXPECT_TRUE(Has(ci, "scripts/test.sh")) << ci;
  EXPECT_TRUE(Has(Source("scripts/test.sh"), "scripts/build.sh"));
}

// The image builds with options CI does not use (no tests): configure this
// source tree with exactly the options the build stage gives scripts/build.sh
// (configuring is the step those options can break).
TEST_F(DockerfileTest, BuildStageOptionsConfigure) {
  std::string runs = stage("build").Joined("RUN");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(
      runs, match, std::regex(R"(scripts/build\.sh((?:\s+-D\S+)+))")))
      << runs;
  std::vector<std::string> argv = {
      BOXMETER_CMAKE_COMMAND, "-S", kSourceDir, "-B", "", "-G", "Ninja"};
  TempDir build;
  argv[4] = build.path();
  std::istringstream options(match[1].str());
  for (std::string option; options >> option;) argv.push_back(option);
  CommandResult result = RunProgram(argv, {}, 120s);
  EXPECT_EQ(result.code, 0) << result.output;
  EXPECT_TRUE(Has(ReadFile(build.path() + "/CMakeCache.txt"),
                  "BOXMETER_TESTS:BOOL=OFF"));
}

TEST_F(DockerfileTest, RuntimeStageHasOnlyRuntimePackagesAndNoRoot) {
  const Stage& runtime = stage("boxmeter");
  EXPECT_EQ(runtime.base, "debian:12-slim");
  std::string runs = runtime.Joined("RUN");
  EXPECT_TRUE(Has(runs, "install-deps.sh runtime")) << runs;
  EXPECT_FALSE(Has(runs, "install-deps.sh build")) << runs;
  EXPECT_FALSE(Has(runs, "install-deps.sh test")) << runs;
  EXPECT_FALSE(Has(runs, "apt-get install")) << "packages come from the "
                                                "script's runtime list only";

  std::vector<std::string> users = runtime.All("USER");
  ASSERT_EQ(users.size(), 1u);
  std::string user = users[0].substr(0, users[0].find(':'));
  EXPECT_NE(user, "root");
  EXPECT_NE(user, "0");

  EXPECT_EQ(runtime.All("STOPSIGNAL"), std::vector<std::string>{"SIGTERM"});
  EXPECT_TRUE(Has(runtime.Joined("ENTRYPOINT"), "boxmeter-collector"));
  EXPECT_TRUE(Has(runtime.Joined("COPY"), "--from=build"));

  // The health check runs the script the image copies in, which reads the
  // file the image tells the collector to write.
  std::vector<std::string> checks = runtime.All("HEALTHCHECK");
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_TRUE(Has(checks[0], "/usr/local/bin/boxmeter-healthcheck"))
      << checks[0];
  EXPECT_TRUE(Has(runtime.Joined("COPY"),
                  "deploy/docker/healthcheck.sh "
                  "/usr/local/bin/boxmeter-healthcheck"));
  EXPECT_TRUE(Has(runtime.Joined("ENV"), "BOXMETER_HEALTH_FILE="));
}

TEST_F(DockerfileTest, SingBoxIsAPinnedReleaseBuiltWithTheV2rayApi) {
  const Stage& build = stage("sing-box-build");
  EXPECT_TRUE(build.base.starts_with("golang:")) << build.base;
  std::string args = build.Joined("ARG");
  std::smatch match;
  ASSERT_TRUE(std::regex_search(
      args, match, std::regex(R"(SING_BOX_VERSION=v\d+\.\d+\.\d+\b)")))
      << "a release tag, not a branch: " << args;
  EXPECT_TRUE(
      std::regex_search(args, std::regex(R"(SING_BOX_COMMIT=[0-9a-f]{40}\b)")))
      << "the tag's commit, so a moved tag fails the build: " << args;
  std::string runs = build.Joined("RUN");
  EXPECT_TRUE(Has(runs, "rev-parse HEAD")) << runs;
  EXPECT_TRUE(Has(runs, ",with_v2ray_api")) << runs;
  EXPECT_TRUE(Has(runs, "grep -q with_v2ray_api"))
      << "the build checks the tag made it into the binary";

  // The sing-box image is sing-box-runtime (buildable without Go, so
  // scripts/image-test.sh builds and runs it) plus the binary.
  const Stage& run = stage("sing-box");
  EXPECT_EQ(run.base, "sing-box-runtime");
  EXPECT_TRUE(Has(run.Joined("COPY"), "--from=sing-box-build"));
  const Stage& runtime = stage("sing-box-runtime");
  EXPECT_EQ(runtime.All("STOPSIGNAL"), std::vector<std::string>{"SIGTERM"});
  // Not the boxmeter image's uid: nothing running as sing-box may reach the
  // collector's processes or secrets. sing-box-reloader, its parent,
  // signals it instead.
  EXPECT_EQ(runtime.All("USER"), std::vector<std::string>{"10002:10002"});
  EXPECT_NE(runtime.All("USER"), stage("boxmeter").All("USER"));
  EXPECT_TRUE(
      Has(runtime.Joined("ENTRYPOINT"), "/usr/local/bin/sing-box-reloader"));
  EXPECT_TRUE(Has(runtime.Joined("RUN"), "inotify-tools"));
}

// Every file COPY takes from the build context exists, with its mode.
TEST_F(DockerfileTest, CopiedFilesExist) {
  for (const auto& [name, s] : stages_) {
    for (const std::string& args : s.All("COPY")) {
      if (Has(args, "--from=")) continue;
      std::istringstream words(args);
      std::vector<std::string> parts;
      for (std::string word; words >> word;) parts.push_back(word);
      ASSERT_GE(parts.size(), 2u) << args;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        if (parts[i] == ".") continue;
        EXPECT_TRUE(fs::exists(kSourceDir + "/" + parts[i]))
            << name << ": " << parts[i];
        if (parts[i].ends_with(".sh")) {
          EXPECT_EQ(access((kSourceDir + "/" + parts[i]).c_str(), X_OK), 0)
              << parts[i] << " must be executable (COPY keeps the mode)";
        }
      }
    }
  }
}

// --- The runtime packages cover the binaries ---------------------------------

// The words of `name=( ... )` in scripts/install-deps.sh, without comments.
std::vector<std::string> PackageList(const std::string& name) {
  std::string script = Source("scripts/install-deps.sh");
  size_t begin = script.find(name + "=(");
  if (begin == std::string::npos) {
    throw std::runtime_error("no " + name + " in install-deps.sh");
  }
  size_t end = script.find(')', begin);
  std::istringstream lines(
      script.substr(begin + name.size() + 2, end - begin - name.size() - 2));
  std::vector<std::string> packages;
  for (std::string line; std::getline(lines, line);) {
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    for (std::string word; words >> word;) packages.push_back(word);
  }
  return packages;
}

// The installed packages `roots` need, by Depends and Pre-Depends, with
// `roots` themselves. The first alternative of an "a | b" is followed, as apt
// would install it; virtual names that no installed package has are skipped.
std::set<std::string> DependencyClosure(const std::vector<std::string>& roots) {
  std::set<std::string> seen;
  std::vector<std::string> next(roots.begin(), roots.end());
  while (!next.empty()) {
    std::vector<std::string> argv = {
        "dpkg-query", "-W", "-f=${Package}\t${Depends}, ${Pre-Depends}\n"};
    for (const std::string& p : next) {
      if (seen.insert(p).second) argv.push_back(p);
    }
    next.clear();
    if (argv.size() == 3) break;
    CommandResult result = RunProgram(argv);  // non-zero when a name is virtual
    std::istringstream lines(result.output);
    for (std::string line; std::getline(lines, line);) {
      size_t tab = line.find('\t');
      if (tab == std::string::npos) continue;
      std::istringstream deps(line.substr(tab + 1));
      for (std::string dep; std::getline(deps, dep, ',');) {
        dep = dep.substr(0, dep.find('|'));
        static const std::regex kName(R"(^\s*([a-z0-9][a-z0-9+.-]*))");
        std::smatch match;
        if (std::regex_search(dep, match, kName)) next.push_back(match[1]);
      }
    }
  }
  return seen;
}

// The shared libraries `binary` loads, as absolute paths.
std::vector<std::string> SharedLibraries(const std::string& binary) {
  CommandResult result = RunProgram({"ldd", binary});
  if (result.code != 0) throw std::runtime_error("ldd: " + result.output);
  std::vector<std::string> paths;
  static const std::regex kPath(R"((/\S+) \(0x)");
  for (std::sregex_iterator
           it(result.output.begin(), result.output.end(), kPath),
       end;
       it != end; ++it) {
    paths.push_back((*it)[1]);
  }
  return paths;
}

// Path -> owning package, for each path (or its /usr twin: /lib is a link to
// /usr/lib on Debian 12, and dpkg knows only the name it shipped).
std::map<std::string, std::string> Owners(
    const std::vector<std::string>& paths) {
  std::vector<std::string> argv = {"dpkg-query", "-S"};
  std::map<std::string, std::string> twin_of;
  for (const std::string& path : paths) {
    std::string twin =
        path.starts_with("/usr/") ? path.substr(4) : "/usr" + path;
    argv.push_back(path);
    argv.push_back(twin);
    twin_of[twin] = path;
  }
  CommandResult result = RunProgram(argv);  // non-zero: some twins are unknown
  std::map<std::string, std::string> owners;
  std::istringstream lines(result.output);
  static const std::regex kOwner(R"(^([a-z0-9][a-z0-9+.-]*)(:\w+)?: (/\S+)$)");
  for (std::string line; std::getline(lines, line);) {
    std::smatch match;
    if (!std::regex_match(line, match, kOwner)) continue;
    std::string path = match[3];
    if (twin_of.count(path)) path = twin_of[path];
    owners[path] = match[1];
  }
  return owners;
}

// A sanitizer build (scripts/sanitize.sh) loads its runtime (libasan,
// libubsan, libtsan); the binaries an image or package ships never do.
bool IsSanitizerRuntime(const std::string& library) {
  if (std::string_view(BOXMETER_SANITIZE).empty()) return false;
  std::string name = fs::path(library).filename().string();
  for (const char* runtime :
       {"libasan.", "libubsan.", "libtsan.", "liblsan."}) {
    if (name.starts_with(runtime)) return true;
  }
  return false;
}

TEST(RuntimePackages, CoverEverySharedLibraryOfTheBinaries) {
  std::vector<std::string> runtime = PackageList("runtime_packages");
  ASSERT_FALSE(runtime.empty());
  for (const std::string& package : runtime) {
    EXPECT_FALSE(package.ends_with("-dev")) << package;
  }
  std::set<std::string> closure = DependencyClosure(runtime);
  for (const std::string& binary :
       {std::string(BOXMETER_COLLECTOR_BIN), std::string(BOXMETER_GEN_BIN)}) {
    std::vector<std::string> libraries = SharedLibraries(binary);
    ASSERT_GT(libraries.size(), 5u) << binary;
    std::map<std::string, std::string> owners = Owners(libraries);
    for (const std::string& library : libraries) {
      if (IsSanitizerRuntime(library)) continue;
      ASSERT_EQ(owners.count(library), 1u)
          << library << " (loaded by " << binary
          << ") belongs to no installed package";
      EXPECT_EQ(closure.count(owners[library]), 1u)
          << fs::path(binary).filename().string() << " loads " << library
          << " from " << owners[library]
          << ", which scripts/install-deps.sh runtime does not install (nor "
             "anything it depends on): add it to runtime_packages";
    }
  }
}

// --- The compose file --------------------------------------------------------

// yaml-cpp does not apply YAML merge keys (<<: *anchor); compose does.
YAML::Node Merged(const YAML::Node& node) {
  if (!node.IsMap()) return node;
  YAML::Node merged(YAML::NodeType::Map);
  for (const auto& entry : node) {
    if (entry.first.as<std::string>() != "<<") {
      merged[entry.first.as<std::string>()] = entry.second;
    }
  }
  if (node["<<"]) {
    for (const auto& entry : node["<<"]) {
      std::string key = entry.first.as<std::string>();
      if (!merged[key]) merged[key] = entry.second;
    }
  }
  return merged;
}

class ComposeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    compose_ = YAML::LoadFile(kDockerDir + "/compose.yaml");
    ASSERT_TRUE(compose_["services"].IsMap());
  }
  YAML::Node Service(const std::string& name) {
    YAML::Node service = compose_["services"][name];
    if (!service) throw std::runtime_error("no service " + name);
    return Merged(service);
  }
  // The host file mounted at `target` in `service`, or "".
  std::string MountSource(const YAML::Node& service,
                          const std::string& target) {
    for (const auto& volume : service["volumes"]) {
      std::string spec = volume.as<std::string>();
      std::vector<std::string> parts;
      std::istringstream in(spec);
      for (std::string part; std::getline(in, part, ':');) {
        parts.push_back(part);
      }
      if (parts.size() >= 2 && parts[1] == target) return parts[0];
    }
    return "";
  }

  YAML::Node compose_;
};

TEST_F(ComposeTest, CollectorLivesInSingBoxsNamespaces) {
  YAML::Node collector = Service("collector");
  // The stats API on 127.0.0.1 is reachable from the collector and from
  // nothing outside sing-box's network namespace.
  EXPECT_EQ(collector["network_mode"].as<std::string>(), "service:sing-box");
  // But not its PID namespace, and not its uid: nothing running as
  // sing-box can see the collector's processes (environ, memory, root).
  EXPECT_FALSE(collector["pid"]);
  EXPECT_EQ(collector["user"].as<std::string>(), "10001:10001");
  EXPECT_EQ(Service("sing-box")["user"].as<std::string>(), "10002:10002");
  // The reload handshake's volume is shared, no secret is.
  EXPECT_EQ(MountSource(collector, "/run/sing-box-reload"), "sing-box-reload");
  EXPECT_EQ(MountSource(Service("sing-box"), "/run/sing-box-reload"),
            "sing-box-reload");
  EXPECT_FALSE(Service("sing-box")["secrets"]);
  EXPECT_FALSE(collector["ports"]) << "the collector listens on nothing";
  EXPECT_TRUE(collector["read_only"].as<bool>());
  EXPECT_EQ(collector["cap_drop"][0].as<std::string>(), "ALL");
}

TEST_F(ComposeTest, ImagesAreTheDockerfilesTargets) {
  std::string dockerfile = Source("deploy/docker/Dockerfile");
  std::map<std::string, Stage> stages = ParseDockerfile(dockerfile);
  for (const auto& [service, target] :
       std::map<std::string, std::string>{{"collector", "boxmeter"},
                                          {"init", "boxmeter"},
                                          {"sing-box", "sing-box"}}) {
    YAML::Node build = Service(service)["build"];
    ASSERT_TRUE(build) << service;
    EXPECT_EQ(build["target"].as<std::string>(), target) << service;
    EXPECT_EQ(stages.count(target), 1u) << target;
    fs::path context =
        fs::path(kDockerDir) / build["context"].as<std::string>();
    EXPECT_TRUE(fs::equivalent(context, kSourceDir)) << context;
    EXPECT_TRUE(fs::exists(context / build["dockerfile"].as<std::string>()));
  }
  // The sing-box image is tagged with the version the Dockerfile pins.
  std::smatch match;
  std::string args = stages.at("sing-box-build").Joined("ARG");
  ASSERT_TRUE(
      std::regex_search(args, match, std::regex(R"(SING_BOX_VERSION=v(\S+))")));
  EXPECT_EQ(Service("sing-box")["image"].as<std::string>(),
            "sing-box-v2ray-api:" + match[1].str());
}

// The config the compose file mounts is one the binaries accept, and it
// agrees with the compose file: loopback API, the shared config volume, the
// hook the image installs.
TEST_F(ComposeTest, MountedConfigMatchesTheComposeFile) {
  YAML::Node collector = Service("collector");
  std::string mounted = MountSource(collector, "/etc/boxmeter/boxmeter.yaml");
  ASSERT_FALSE(mounted.empty());
  std::string path = (fs::path(kDockerDir) / mounted).string();
  Config config;
  std::vector<std::string> errors;
  ASSERT_TRUE(LoadConfig(path, {}, &config, &errors))
      << ::testing::PrintToString(errors);

  EXPECT_TRUE(config.source.address.starts_with("127.0.0.1:"))
      << config.source.address;
  EXPECT_EQ(config.database.url.find("password"), std::string::npos);
  // generator.output is on the volume sing-box reads, and the template is
  // mounted where generator.template says.
  std::string output_dir = fs::path(config.generator.output).parent_path();
  std::string volume = MountSource(collector, output_dir);
  ASSERT_FALSE(volume.empty()) << output_dir << " is not a volume";
  EXPECT_EQ(MountSource(Service("sing-box"), output_dir), volume);
  EXPECT_FALSE(MountSource(collector, config.generator.template_path).empty());

  // The hook is the script the image installs under that name.
  EXPECT_EQ(config.hooks.on_users_changed, "boxmeter-regenerate");
  EXPECT_TRUE(Has(Source("deploy/docker/Dockerfile"),
                  "deploy/docker/regenerate.sh "
                  "/usr/local/bin/boxmeter-regenerate"));

  // Enough time to stop for the last poll and commit.
  std::string grace = collector["stop_grace_period"].as<std::string>();
  ASSERT_TRUE(grace.ends_with("s")) << grace;
  EXPECT_GT(std::stoi(grace), std::chrono::duration_cast<std::chrono::seconds>(
                                  config.source.timeout * 3)
                                      .count() +
                                  10);
}

TEST_F(ComposeTest, StartsInOrder) {
  // The schema and sing-box's first config exist before sing-box starts.
  EXPECT_EQ(Service("migrate")["depends_on"]["postgres"]["condition"]
                .as<std::string>(),
            "service_healthy");
  EXPECT_EQ(
      Service("init")["depends_on"]["migrate"]["condition"].as<std::string>(),
      "service_completed_successfully");
  EXPECT_EQ(
      Service("sing-box")["depends_on"]["init"]["condition"].as<std::string>(),
      "service_completed_successfully");
  EXPECT_EQ(Service("migrate")["command"][0].as<std::string>(), "--migrate");
  EXPECT_EQ(Service("init")["entrypoint"][0].as<std::string>(),
            "/usr/bin/boxmeter-gen");
}

// Secrets from files, one login per job, none a superuser: the migration as
// the owner, boxmeter-gen as the generator, the collector as itself.
TEST_F(ComposeTest, EachJobLogsInAsItsOwnLoginFromASecretFile) {
  std::map<std::string, std::string> logins = {{"migrate", "boxmeter_owner"},
                                               {"init", "boxmeter_gen"},
                                               {"collector", "boxmeter_meter"}};
  for (const auto& [service, login] : logins) {
    YAML::Node env = Service(service)["environment"];
    EXPECT_TRUE(env["BOXMETER_DATABASE_URL"].as<std::string>().starts_with(
        "postgresql://" + login + "@"))
        << service;
    std::string file = env["PGPASSFILE"].as<std::string>();
    EXPECT_TRUE(file.starts_with("/run/secrets/")) << service;
    bool mounted = false;
    for (const auto& secret : Service(service)["secrets"]) {
      mounted |= "/run/secrets/" + secret.as<std::string>() == file;
    }
    EXPECT_TRUE(mounted) << service << " does not mount " << file;
  }
  EXPECT_TRUE(
      Service("collector")["environment"]["BOXMETER_GENERATOR_DATABASE_URL"]
          .as<std::string>()
          .starts_with("postgresql://boxmeter_gen@"));
  for (const auto& service : compose_["services"]) {
    for (const auto& variable : service.second["environment"]) {
      std::string name = variable.first.as<std::string>();
      EXPECT_FALSE(Has(name, "PASSWORD") && !name.ends_with("_FILE"))
          << service.first << ": " << name << " holds a password";
      EXPECT_NE(name, "POSTGRES_USER") << "boxmeter logs in as no superuser";
    }
  }
}

// Prometheus scrapes the collector where its config listens, inside
// sing-box's network namespace and published nowhere; Grafana loads the
// provisioned data sources and dashboards, logging in to PostgreSQL as the
// read-only login the initdb script makes, with a password from a secret.
TEST_F(ComposeTest, PrometheusScrapesTheCollectorAndGrafanaHasTheDashboards) {
  Config config;
  std::vector<std::string> errors;
  ASSERT_TRUE(LoadConfig(kDockerDir + "/boxmeter.yaml", {}, &config, &errors))
      << ::testing::PrintToString(errors);
  std::string listen = config.metrics.listen;
  ASSERT_FALSE(listen.empty());
  std::string port = listen.substr(listen.rfind(':') + 1);
  YAML::Node prometheus = Service("prometheus");
  EXPECT_EQ(MountSource(prometheus, "/etc/prometheus/prometheus.yml"),
            "./prometheus.yml");
  YAML::Node scrape = YAML::LoadFile(kDockerDir + "/prometheus.yml");
  EXPECT_EQ(scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
                .as<std::string>(),
            "sing-box:" + port);
  EXPECT_FALSE(prometheus["ports"]);
  for (const auto& published : Service("sing-box")["ports"]) {
    EXPECT_FALSE(published.as<std::string>().starts_with(port + ":"));
  }

  YAML::Node grafana = Service("grafana");
  EXPECT_EQ(MountSource(grafana, "/etc/grafana/provisioning"),
            "../grafana/provisioning");
  YAML::Node providers = YAML::LoadFile(
      kSourceDir + "/deploy/grafana/provisioning/dashboards/boxmeter.yaml");
  std::string dashboards =
      providers["providers"][0]["options"]["path"].as<std::string>();
  EXPECT_EQ(MountSource(grafana, dashboards), "../grafana/dashboards");
  for (const char* board : {"boxmeter-health.json", "boxmeter-traffic.json"}) {
    EXPECT_TRUE(fs::exists(kSourceDir + "/deploy/grafana/dashboards/" + board));
  }
  YAML::Node sources = YAML::LoadFile(
      kSourceDir + "/deploy/grafana/provisioning/datasources/boxmeter.yaml");
  std::set<std::string> secrets;
  for (const auto& secret : grafana["secrets"]) {
    secrets.insert("/run/secrets/" + secret.as<std::string>());
  }
  for (const auto& source : sources["datasources"]) {
    std::string type = source["type"].as<std::string>();
    if (type == "prometheus") {
      EXPECT_EQ(source["url"].as<std::string>(), "http://prometheus:9090");
      continue;
    }
    ASSERT_EQ(type, "postgres");
    std::string user = source["user"].as<std::string>();
    EXPECT_TRUE(
        Has(Source("deploy/docker/initdb/boxmeter-roles.sh"),
            "CREATE ROLE " + user +
                " LOGIN PASSWORD :'grafana' IN ROLE boxmeter_readonly"));
    std::string password =
        source["secureJsonData"]["password"].as<std::string>();
    std::smatch file;
    ASSERT_TRUE(
        std::regex_match(password, file, std::regex(R"(\$__file\{(.+)\})")))
        << password;
    EXPECT_EQ(secrets.count(file[1].str()), 1u) << file[1];
  }
  EXPECT_EQ(grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
                .as<std::string>(),
            "/run/secrets/grafana-admin-password");
}

// --- The Kubernetes example --------------------------------------------------

TEST(Kubernetes, SidecarPodSharesWhatTheHookNeeds) {
  std::vector<YAML::Node> documents = YAML::LoadAllFromFile(
      kSourceDir + "/deploy/k8s/sing-box-with-boxmeter.yaml");
  YAML::Node config_map;
  YAML::Node deployment;
  for (const YAML::Node& document : documents) {
    std::string kind = document["kind"].as<std::string>();
    if (kind == "ConfigMap") config_map = document;
    if (kind == "Deployment") deployment = document;
  }
  ASSERT_TRUE(config_map);
  ASSERT_TRUE(deployment);

  YAML::Node pod = deployment["spec"]["template"]["spec"];
  EXPECT_FALSE(pod["shareProcessNamespace"] &&
               pod["shareProcessNamespace"].as<bool>());
  EXPECT_TRUE(pod["securityContext"]["runAsNonRoot"].as<bool>());
  EXPECT_EQ(pod["securityContext"]["fsGroup"].as<int>(), 10002)
      << "sing-box's group: the generated config is readable by it";
  std::set<std::string> names;
  for (const auto& container : pod["containers"]) {
    std::string name = container["name"].as<std::string>();
    names.insert(name);
    EXPECT_FALSE(
        container["securityContext"]["allowPrivilegeEscalation"].as<bool>());
    EXPECT_EQ(container["securityContext"]["runAsUser"].as<int>(),
              name == "sing-box" ? 10002 : 10001);
    EXPECT_TRUE(container["resources"]["limits"]["memory"]) << name;
    if (name == "sing-box") {
      EXPECT_FALSE(container["env"]) << "sing-box gets no secret";
      EXPECT_FALSE(container["envFrom"]) << "sing-box gets no secret";
    }
  }
  EXPECT_EQ(names, (std::set<std::string>{"sing-box", "boxmeter-collector"}));

  // The logins come from secret files mounted into the boxmeter containers
  // only, named by *_FILE variables; no password is in any environment.
  std::map<std::string, std::set<std::string>> secret_mounts;
  for (const auto& volume : pod["volumes"]) {
    if (volume["secret"]) secret_mounts[volume["name"].as<std::string>()];
  }
  EXPECT_EQ(secret_mounts.size(), 2u);
  for (const YAML::Node& list : {pod["initContainers"], pod["containers"]}) {
    for (const auto& container : list) {
      std::string name = container["name"].as<std::string>();
      for (const auto& mount : container["volumeMounts"]) {
        auto it = secret_mounts.find(mount["name"].as<std::string>());
        if (it == secret_mounts.end()) continue;
        EXPECT_NE(name, "sing-box") << "sing-box mounts no secret";
        it->second.insert(mount["mountPath"].as<std::string>());
      }
      for (const auto& variable : container["env"]) {
        std::string key = variable["name"].as<std::string>();
        EXPECT_FALSE(Has(key, "PASSWORD")) << name << ": " << key;
        EXPECT_FALSE(variable["valueFrom"]) << name << ": " << key;
        if (key.ends_with("_URL_FILE")) {
          std::string file = variable["value"].as<std::string>();
          bool mounted = false;
          for (const auto& [volume, paths] : secret_mounts) {
            mounted = mounted || paths.count(file.substr(0, file.rfind('/')));
          }
          EXPECT_TRUE(mounted) << name << ": " << key << " " << file;
        }
      }
    }
  }

  // The config in the ConfigMap is one the collector accepts (with a file
  // standing in for the mounted secret).
  TempDir dir;
  std::string path = dir.path() + "/boxmeter.yaml";
  std::ofstream(path) << config_map["data"]["boxmeter.yaml"].as<std::string>();
  std::string url_file = dir.path() + "/url";
  std::ofstream(url_file) << "postgresql://boxmeter_meter:secret@db/boxmeter\n";
  ASSERT_EQ(chmod(url_file.c_str(), 0440), 0);
  Config config;
  std::vector<std::string> errors;
  ASSERT_TRUE(LoadConfig(path, {{"BOXMETER_DATABASE_URL_FILE", url_file}},
                         &config, &errors))
      << ::testing::PrintToString(errors);
  EXPECT_EQ(config.database.url,
            "postgresql://boxmeter_meter:secret@db/boxmeter");
  // Without the stand-in, the file is the collector's mounted secret.
  YAML::Node yaml =
      YAML::Load(config_map["data"]["boxmeter.yaml"].as<std::string>());
  std::string own = yaml["database"]["url_file"].as<std::string>();
  bool mounted = false;
  for (const auto& container : pod["containers"]) {
    if (container["name"].as<std::string>() != "boxmeter-collector") continue;
    for (const auto& mount : container["volumeMounts"]) {
      mounted = mounted ||
                (secret_mounts.count(mount["name"].as<std::string>()) &&
                 own.starts_with(mount["mountPath"].as<std::string>() + "/"));
    }
  }
  EXPECT_TRUE(mounted) << own;
  EXPECT_TRUE(config.source.address.starts_with("127.0.0.1:"));
  EXPECT_EQ(config.hooks.on_users_changed, "boxmeter-regenerate");
  // Its template is the repository's base template.
  EXPECT_EQ(
      Json::parse(config_map["data"]["sing-box.base.json"].as<std::string>()),
      Json::parse(Source("deploy/sing-box.base.json")));
}

// --- The base template
// ---------------------------------------------------------

TEST(BaseTemplate, IsWhatBoxmeterGenExtends) {
  Json base = Json::parse(Source("deploy/sing-box.base.json"));
  ASSERT_TRUE(base.is_object());
  // boxmeter-gen adds the inbounds and experimental.v2ray_api.
  EXPECT_EQ(base["inbounds"], Json::array());
  EXPECT_FALSE(base.contains("experimental"));
  // Every outbound the example config counts exists, and is the route's
  // final one.
  std::set<std::string> outbounds;
  for (const Json& outbound : base["outbounds"]) {
    outbounds.insert(outbound["tag"].get<std::string>());
  }
  Config config;
  std::vector<std::string> errors;
  ASSERT_TRUE(LoadConfig(kSourceDir + "/deploy/boxmeter.example.yaml", {},
                         &config, &errors));
  for (const std::string& tag : config.generator.stats_outbounds) {
    EXPECT_EQ(outbounds.count(tag), 1u) << tag;
  }
  EXPECT_EQ(outbounds.count(base["route"]["final"].get<std::string>()), 1u);
}

// --- The scripts the image adds
// --------------------------------------------------

class HealthcheckTest : public ::testing::Test {
 protected:
  CommandResult Check(const std::string& file) {
    return RunProgram(
        {kDockerDir + "/healthcheck.sh"},
        {{"BOXMETER_HEALTH_FILE", file}, {"BOXMETER_HEALTH_MAX_AGE", "60"}});
  }
  void Age(const std::string& file, int seconds) {
    struct timespec times[2];
    clock_gettime(CLOCK_REALTIME, &times[0]);
    times[0].tv_sec -= seconds;
    times[1] = times[0];
    ASSERT_EQ(utimensat(AT_FDCWD, file.c_str(), times, 0), 0);
  }

  TempDir dir_;
  std::string file_ = dir_.path() + "/healthy";
};

TEST_F(HealthcheckTest, UnhealthyBeforeTheFirstGoodPoll) {
  CommandResult result = Check(file_);
  EXPECT_EQ(result.code, 1);
  EXPECT_TRUE(Has(result.output, "does not exist")) << result.output;
}

TEST_F(HealthcheckTest, HealthyRightAfterAGoodPoll) {
  std::ofstream(file_).close();
  Age(file_, 5);
  CommandResult result = Check(file_);
  EXPECT_EQ(result.code, 0) << result.output;
}

TEST_F(HealthcheckTest, UnhealthyWhenTheLastGoodPollIsTooOld) {
  std::ofstream(file_).close();
  Age(file_, 120);
  CommandResult result = Check(file_);
  EXPECT_EQ(result.code, 1);
  EXPECT_TRUE(Has(result.output, "more than 60s")) << result.output;
}

TEST_F(HealthcheckTest, UnhealthyWithoutAHealthFile) {
  CommandResult result = Check("");
  EXPECT_EQ(result.code, 1);
  EXPECT_TRUE(Has(result.output, "BOXMETER_HEALTH_FILE")) << result.output;
}

// boxmeter-regenerate and sing-box-reloader together, on this machine:
// stand-ins for boxmeter-gen and boxmeter-collector --flush (on PATH, logging
// their arguments in order, exiting as told), the real sing-box-reloader over
// a stand-in sing-box that logs every SIGHUP, and a directory for the reload
// handshake as the volume sing-box-reload.
class RegenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteScript("boxmeter-gen",
                "echo \"gen $*\" >> \"$STUB_LOG\"\n"
                "if [ \"$1\" = --check ]; then exit \"$STUB_CHECK_EXIT\"; fi\n"
                "exit \"$STUB_GEN_EXIT\"\n");
    WriteScript("boxmeter-collector",
                "echo \"collector $*\" >> \"$STUB_LOG\"\n"
                "exit \"$STUB_FLUSH_EXIT\"\n");
    WriteScript("sing-box",
                "trap 'echo hup >> \"$LOADS\"' HUP\n"
                "echo start >> \"$LOADS\"\n"
                "while :; do sleep 1 & wait $!; done\n");
    fs::create_directory(reload_dir_);
  }

  // SIGTERM, which sing-box-reloader passes on: no stand-in outlives a test.
  void TearDown() override {
    if (reloader_ && reloader_->Running()) {
      reloader_->Signal(SIGCONT);
      reloader_->Signal(SIGTERM);
      EXPECT_TRUE(reloader_->Wait(10s)) << "sing-box-reloader did not end";
    }
  }

  void WriteScript(const std::string& name, const std::string& body) {
    std::string path = dir_.path() + "/" + name;
    std::ofstream(path) << "#!/bin/sh\n" << body;
    ASSERT_EQ(chmod(path.c_str(), 0755), 0);
  }

  void StartReloader() {
    Process::Options options;
    options.argv = {kDockerDir + "/sing-box-reloader.sh",
                    dir_.path() + "/sing-box"};
    options.env = {{"SING_BOX_RELOAD_DIR", reload_dir_}, {"LOADS", loads_}};
    options.stderr_path = dir_.path() + "/reloader.log";
    reloader_ = Process::Start(options);
    ASSERT_TRUE(WaitUntil([&] { return Loads() == "start\n"; }, 10s));
  }

  std::string Loads() { return ReadFile(loads_); }

  CommandResult Regenerate(int check_exit, int gen_exit = 0,
                           int flush_exit = 0) {
    return RunProgram({kDockerDir + "/regenerate.sh"},
                      {{"PATH", dir_.path() + ":" + getenv("PATH")},
                       {"SING_BOX_RELOAD_DIR", reload_dir_},
                       {"SING_BOX_RELOAD_TIMEOUT", "5"},
                       {"STUB_LOG", log_},
                       {"STUB_CHECK_EXIT", std::to_string(check_exit)},
                       {"STUB_GEN_EXIT", std::to_string(gen_exit)},
                       {"STUB_FLUSH_EXIT", std::to_string(flush_exit)}});
  }

  TempDir dir_;
  std::string log_ = dir_.path() + "/steps.log";
  std::string loads_ = dir_.path() + "/loads.log";
  std::string reload_dir_ = dir_.path() + "/reload";
  std::unique_ptr<Process> reloader_;
};

TEST_F(RegenerateTest, UpToDateConfigIsNeitherWrittenNorReloaded) {
  StartReloader();
  CommandResult result = Regenerate(/*check_exit=*/0);
  EXPECT_EQ(result.code, 0) << result.output;
  EXPECT_EQ(ReadFile(log_), "gen --check\n");
  EXPECT_EQ(Loads(), "start\n") << "sing-box was signalled needlessly";
}

TEST_F(RegenerateTest, ChangedConfigIsWrittenFlushedThenReloadedOnce) {
  StartReloader();
  CommandResult result = Regenerate(/*check_exit=*/1);
  EXPECT_EQ(result.code, 0) << result.output;
  // The flush comes after the write and right before the reload request.
  EXPECT_EQ(ReadFile(log_), "gen --check\ngen \ncollector --flush\n");
  EXPECT_EQ(Loads(), "start\nhup\n") << "the hook returns once reloaded";
  EXPECT_TRUE(reloader_->Running());
  // A second run with the config current: no second reload.
  result = Regenerate(/*check_exit=*/0);
  EXPECT_EQ(result.code, 0) << result.output;
  EXPECT_EQ(Loads(), "start\nhup\n");
}

TEST_F(RegenerateTest, AnUnansweredReloadStaysPendingUntilServed) {
  StartReloader();
  reloader_->Signal(SIGSTOP);  // sing-box-reloader hangs
  CommandResult result = Regenerate(/*check_exit=*/1);
  EXPECT_EQ(result.code, 1) << "retried on the next poll";
  EXPECT_TRUE(Has(result.output, "did not answer")) << result.output;
  // The next run finds the config current but the reload pending: it
  // flushes and asks again.
  result = Regenerate(/*check_exit=*/0);
  EXPECT_EQ(result.code, 1);
  EXPECT_EQ(ReadFile(log_),
            "gen --check\ngen \ncollector --flush\n"
            "gen --check\ncollector --flush\n");
  // The reloader, back, serves the latest request, once.
  reloader_->Signal(SIGCONT);
  ASSERT_TRUE(WaitUntil([&] { return Loads() == "start\nhup\n"; }, 10s))
      << Loads();
  result = Regenerate(/*check_exit=*/0);
  EXPECT_EQ(result.code, 0) << result.output;
  EXPECT_EQ(Loads(), "start\nhup\n") << "nothing pending any more";
}

TEST_F(RegenerateTest, APendingRequestAtStartIsNotSignalled) {
  // The container was down when the hook asked: the sing-box started now
  // reads the current config, and must not get a SIGHUP while starting.
  CommandResult result = Regenerate(/*check_exit=*/1);
  EXPECT_EQ(result.code, 1);
  StartReloader();
  result = Regenerate(/*check_exit=*/0);
  EXPECT_EQ(result.code, 0) << result.output;
  EXPECT_EQ(Loads(), "start\n");
  EXPECT_EQ(ReadFile(log_),
            "gen --check\ngen \ncollector --flush\n"
            "gen --check\n")
      << "marked done at start: nothing pending, no second flush";
}

TEST_F(RegenerateTest, AFailedFlushDoesNotHoldBackTheReload) {
  StartReloader();
  CommandResult result = Regenerate(/*check_exit=*/1, 0, /*flush_exit=*/69);
  EXPECT_EQ(result.code, 0) << result.output;
  EXPECT_TRUE(Has(result.output, "reloading anyway")) << result.output;
  EXPECT_EQ(Loads(), "start\nhup\n");
}

TEST_F(RegenerateTest, GeneratorErrorsFailTheHookWithoutFlushOrReload) {
  StartReloader();
  // --check failing (say, the database is down: 69).
  CommandResult result = Regenerate(/*check_exit=*/69);
  EXPECT_EQ(result.code, 1);
  EXPECT_EQ(ReadFile(log_), "gen --check\n");
  // Writing failing (73).
  result = Regenerate(/*check_exit=*/1, /*gen_exit=*/73);
  EXPECT_EQ(result.code, 1);
  EXPECT_EQ(ReadFile(log_), "gen --check\ngen --check\ngen \n");
  EXPECT_EQ(Loads(), "start\n");
}

TEST_F(RegenerateTest, ReloaderPassesSigtermOnAndEndsWithSingBox) {
  StartReloader();
  reloader_->Signal(SIGTERM);
  std::optional<int> code = reloader_->Wait(10s);
  ASSERT_TRUE(code) << "sing-box-reloader did not end after SIGTERM";
  EXPECT_EQ(*code, 128 + SIGTERM) << "sing-box's own status (the stand-in's)";
}

}  // namespace
}  // namespace boxmeter::testing
