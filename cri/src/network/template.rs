//! The CNI config template of UpdateRuntimeConfig: kubelet sends the node's pod CIDR(s) and
//! containerd renders `conf_template` with Go's text/template over
//! `{PodCIDR, PodCIDRRanges, Routes}` (pkg/cri/server/update_runtime_config.go). We implement
//! the part of text/template that its documented templates use: `{{.PodCIDR}}`,
//! `{{range $i, $r := .PodCIDRRanges}}...{{end}}` (and over `.Routes`), `{{$r}}`,
//! `{{if $i}}...{{end}}`, comments, and the `{{-`/`-}}` whitespace trims. Anything else is an
//! error naming the action, never silently copied through.

use std::net::IpAddr;

use super::result::Cidr;

enum Node {
    Text(String),
    Field(String),
    Var(String),
    Range {
        index: Option<String>,
        elem: String,
        field: String,
        body: Vec<Node>,
    },
    If {
        var: String,
        body: Vec<Node>,
    },
}

#[derive(Clone)]
enum Val {
    Int(usize),
    Str(String),
}

struct Data {
    pod_cidr: String,
    ranges: Vec<String>,
    routes: Vec<String>,
}

/// Renders `template` for `pod_cidr` (kubelet's comma-separated list) and checks the output
/// is JSON. Errors say what is wrong; the caller names the template file.
pub fn render_template(template: &str, pod_cidr: &str) -> Result<String, String> {
    let ranges: Vec<String> = pod_cidr.split(',').map(|s| s.trim().to_string()).collect();
    let mut v4 = false;
    let mut v6 = false;
    for r in &ranges {
        let c: Cidr = r.parse().map_err(|e| format!("pod CIDR {e}"))?;
        match c.addr {
            IpAddr::V4(_) => v4 = true,
            IpAddr::V6(_) => v6 = true,
        }
    }
    // containerd's getRoutes: one default route per family present, IPv4 first.
    let mut routes = Vec::new();
    if v4 {
        routes.push("0.0.0.0/0".to_string());
    }
    if v6 {
        routes.push("::/0".to_string());
    }
    let data = Data {
        pod_cidr: ranges[0].clone(),
        ranges,
        routes,
    };
    let tokens = lex(template)?;
    let mut pos = 0;
    let nodes = parse(&tokens, &mut pos, false)?;
    let mut out = String::new();
    render(&nodes, &data, &mut Vec::new(), &mut out)?;
    serde_json::from_str::<serde_json::Value>(&out)
        .map_err(|e| format!("rendered config is not JSON ({e}):\n{out}"))?;
    Ok(out)
}

enum Token {
    Text(String),
    Action(String),
}

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed action at {:?}", snippet(&rest[start..])))?;
        let mut inner = &after[..end];
        if let Some(s) = inner.strip_prefix("- ").or(inner.strip_prefix("-\n")) {
            text = text.trim_end();
            inner = s;
        }
        trim_next = false;
        if let Some(s) = inner.strip_suffix(" -").or(inner.strip_suffix("\n-")) {
            trim_next = true;
            inner = s;
        }
        if !text.is_empty() {
            tokens.push(Token::Text(text.to_string()));
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            tokens.push(Token::Action(inner.to_string()));
        }
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        tokens.push(Token::Text(text.to_string()));
    }
    Ok(tokens)
}

fn parse(tokens: &[Token], pos: &mut usize, nested: bool) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let tok = &tokens[*pos];
        *pos += 1;
        let action = match tok {
            Token::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Token::Action(a) => a.as_str(),
        };
        if action == "end" {
            if nested {
                return Ok(nodes);
            }
            return Err("{{end}} without {{range}} or {{if}}".into());
        }
        if let Some(spec) = action.strip_prefix("range ") {
            let (vars, field) = spec
                .split_once(":=")
                .ok_or_else(|| format!("unsupported action {{{{{action}}}}}"))?;
            let field = field.trim();
            let vars: Vec<&str> = vars.split(',').map(str::trim).collect();
            let (index, elem) = match vars.as_slice() {
                [e] => (None, *e),
                [i, e] => (Some(i.to_string()), *e),
                _ => return Err(format!("unsupported action {{{{{action}}}}}")),
            };
            let field = field
                .strip_prefix('.')
                .ok_or_else(|| format!("unsupported action {{{{{action}}}}}"))?;
            let body = parse(tokens, pos, true)?;
            nodes.push(Node::Range {
                index,
                elem: elem.to_string(),
                field: field.to_string(),
                body,
            });
        } else if let Some(var) = action.strip_prefix("if ") {
            let var = var.trim();
            if !var.starts_with('$') {
                return Err(format!("unsupported action {{{{{action}}}}}"));
            }
            let body = parse(tokens, pos, true)?;
            nodes.push(Node::If {
                var: var.to_string(),
                body,
            });
        } else if let Some(field) = action.strip_prefix('.') {
            nodes.push(Node::Field(field.to_string()));
        } else if action.starts_with('$') && !action.contains(' ') {
            nodes.push(Node::Var(action.to_string()));
        } else {
            return Err(format!("unsupported action {{{{{action}}}}}"));
        }
    }
    if nested {
        return Err("{{range}} or {{if}} without {{end}}".into());
    }
    Ok(nodes)
}

fn render(
    nodes: &[Node],
    data: &Data,
    vars: &mut Vec<(String, Val)>,
    out: &mut String,
) -> Result<(), String> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Field(f) => match f.as_str() {
                "PodCIDR" => out.push_str(&data.pod_cidr),
                // Go prints a []string as "[a b]".
                "PodCIDRRanges" => out.push_str(&format!("[{}]", data.ranges.join(" "))),
                "Routes" => out.push_str(&format!("[{}]", data.routes.join(" "))),
                other => return Err(format!("unknown field .{other}")),
            },
            Node::Var(v) => match lookup(vars, v)? {
                Val::Int(i) => out.push_str(&i.to_string()),
                Val::Str(s) => out.push_str(&s),
            },
            Node::Range {
                index,
                elem,
                field,
                body,
            } => {
                let list = match field.as_str() {
                    "PodCIDRRanges" => &data.ranges,
                    "Routes" => &data.routes,
                    other => return Err(format!("cannot range over .{other}")),
                };
                for (i, item) in list.iter().enumerate() {
                    let depth = vars.len();
                    if let Some(ix) = index {
                        vars.push((ix.clone(), Val::Int(i)));
                    }
                    vars.push((elem.clone(), Val::Str(item.clone())));
                    render(body, data, vars, out)?;
                    vars.truncate(depth);
                }
            }
            Node::If { var, body } => {
                let truthy = match lookup(vars, var)? {
                    Val::Int(i) => i != 0,
                    Val::Str(s) => !s.is_empty(),
                };
                if truthy {
                    render(body, data, vars, out)?;
                }
            }
        }
    }
    Ok(())
}

fn lookup(vars: &[(String, Val)], name: &str) -> Result<Val, String> {
    vars.iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("undefined variable {name}"))
}

fn snippet(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    // The template of containerd's docs/cri/config.md, as operators copy it.
    const CONTAINERD_DOC: &str = r#"{
  "name": "containerd-net",
  "cniVersion": "1.0.0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          {{- range $i, $range := .PodCIDRRanges}}{{if $i}}, {{end}}
          [{"subnet": "{{$range}}"}]
          {{- end}}
        ],
        "routes": [
          {{- range $i, $route := .Routes}}{{if $i}}, {{end}}
          {"dst": "{{$route}}"}
          {{- end}}
        ]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}"#;

    #[test]
    fn renders_containerds_documented_template() {
        let out = render_template(CONTAINERD_DOC, "10.1.2.0/24, fd00:1::/64").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ipam = &v["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.1.2.0/24");
        assert_eq!(ipam["ranges"][1][0]["subnet"], "fd00:1::/64");
        assert_eq!(ipam["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(ipam["routes"][1]["dst"], "::/0");
        assert_eq!(ipam["routes"].as_array().unwrap().len(), 2);
        // The separator comes only between items.
        assert!(!out.contains("[,") && out.contains("}], "), "{out}");

        let out = render_template(
            r#"{"a": "{{.PodCIDR}}", "b": "{{ .PodCIDRRanges }}" {{/* note */}}}"#,
            "10.9.0.0/16",
        )
        .unwrap();
        assert_eq!(out, r#"{"a": "10.9.0.0/16", "b": "[10.9.0.0/16]" }"#);
    }

    #[test]
    fn errors_name_the_problem() {
        for (tpl, cidr, want) in [
            (r#"{"a":"{{.PodCIDR}}"}"#, "10.0.0.0", "CIDR"),
            (r#"{"a":"{{.PodCIDR}}"}"#, "10.0.0.0/24,x/8", "bad address"),
            (r#"{"a":"{{.Nope}}"}"#, "10.0.0.0/24", "unknown field .Nope"),
            (
                r#"{"a":"{{printf "%s" .PodCIDR}}"}"#,
                "10.0.0.0/24",
                "unsupported action",
            ),
            (r#"{"a":"{{.PodCIDR}"}"#, "10.0.0.0/24", "unclosed"),
            (
                r#"{{range $r := .Routes}}"#,
                "10.0.0.0/24",
                "without {{end}}",
            ),
            (r#"{{end}}"#, "10.0.0.0/24", "without {{range}}"),
            (r#"{{$x}}"#, "10.0.0.0/24", "undefined variable $x"),
            (r#"{"a": {{.PodCIDR}}}"#, "10.0.0.0/24", "not JSON"),
        ] {
            let e = render_template(tpl, cidr).unwrap_err();
            assert!(e.contains(want), "{tpl}: {e}");
        }
    }
}
