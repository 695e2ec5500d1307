//! What can be checked of the packaging without a Docker engine: docker-compose.yml
//! parses and wires the server to PostgreSQL; the Dockerfile's runtime stage is small,
//! non-root, exposes the port, checks health with a binary it has, and starts the binary
//! the README names; the README shows how to install the command line.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_compose_file_runs_the_server_beside_postgres() {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml")).expect("valid YAML");
    let compose = &docs[0];
    let services = &compose["services"];
    let postgres = &services["postgres"];
    assert!(
        postgres["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:")),
        "{postgres:?}"
    );
    assert!(!postgres["healthcheck"]["test"].is_badvalue());
    let user = postgres["environment"]["POSTGRES_USER"]
        .as_str()
        .expect("a user");
    let password = postgres["environment"]["POSTGRES_PASSWORD"]
        .as_str()
        .expect("a password");
    let database = postgres["environment"]["POSTGRES_DB"]
        .as_str()
        .expect("a database");

    let kagzi = &services["kagzi"];
    assert_eq!(
        kagzi["build"].as_str(),
        Some("."),
        "built from this repository's Dockerfile"
    );
    assert_eq!(
        kagzi["depends_on"]["postgres"]["condition"].as_str(),
        Some("service_healthy"),
        "the server starts once PostgreSQL answers"
    );
    let env = &kagzi["environment"];
    assert_eq!(
        env["KAGZI_DB_URL"].as_str(),
        Some(format!("postgres://{user}:{password}@postgres:5432/{database}").as_str())
    );
    assert_eq!(env["KAGZI_SERVER_PORT"].as_str(), Some("50051"));
    let ports: Vec<&str> = kagzi["ports"]
        .as_vec()
        .expect("published ports")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(ports, ["50051:50051"]);
    assert!(!compose["volumes"]["postgres-data"].is_badvalue());
}

/// The instructions of the Dockerfile's last (runtime) stage, continuation lines joined.
fn runtime_stage(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    instructions[last_from..].to_vec()
}

#[test]
fn the_image_runs_the_server_binary_the_readme_names_as_a_non_root_user() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2,
        "multi-stage"
    );
    let stage = runtime_stage(&dockerfile);
    let find = |keyword: &str| -> Vec<&str> {
        stage
            .iter()
            .filter_map(|i| i.strip_prefix(keyword))
            .map(str::trim)
            .collect()
    };
    assert_eq!(find("FROM "), ["debian:bookworm-slim"]);
    let user = find("USER ");
    assert!(
        matches!(user.as_slice(), [u] if *u != "root" && *u != "0"),
        "{user:?}"
    );
    assert_eq!(find("EXPOSE "), ["50051"]);
    let copied = find("COPY ").join(" ");
    assert!(
        copied.contains("/usr/local/bin/kagzi-server") && copied.contains("/usr/local/bin/kagzi "),
        "{copied}"
    );

    let entrypoint = find("ENTRYPOINT ");
    let [entrypoint] = entrypoint.as_slice() else {
        panic!("one ENTRYPOINT: {entrypoint:?}");
    };
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("the exec form");
    assert_eq!(entrypoint, ["kagzi-server"]);
    let readme = read("README.md");
    assert!(
        readme.contains("docker compose up -d") && readme.contains(&format!("`{}`", entrypoint[0])),
        "the README shows `docker compose up -d` and names `{}`",
        entrypoint[0]
    );

    // The health check uses `kagzi health`, which the image has, on the server's port.
    let healthcheck = find("HEALTHCHECK ").join(" ");
    assert!(healthcheck.contains("CMD kagzi health"), "{healthcheck}");
    assert!(
        healthcheck.contains("${KAGZI_SERVER_PORT}"),
        "{healthcheck}"
    );
    assert!(find("ENV ").join(" ").contains("KAGZI_SERVER_PORT=50051"));
}

#[test]
fn the_readme_says_how_to_install_the_command_line() {
    let readme = read("README.md");
    assert!(
        readme.contains("cargo install --path kagzi-cli"),
        "install line"
    );
    assert!(
        readme.contains("kagzi dev"),
        "the quick start uses kagzi dev"
    );
    let manifest = read("kagzi-cli/Cargo.toml");
    assert!(
        manifest.contains("name = \"kagzi\""),
        "the binary is named kagzi"
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "build outputs stay out of the image"
    );
}
