//! The van on a map without JavaScript: one 256 px slippy-map tile around the van's
//! position, from the fleet's tile server, with a marker placed by CSS at the van's pixel.
//!
//! The page only ever asks for the tile the van is in, at [`MAP_ZOOM`]: the customer's
//! browser tells the tile server roughly where the van is (and nothing else: the page
//! sends no referrer), never where the customer's stop is.

/// The zoom of the one tile shown: at 15 a tile spans about 1.2 km at the equator and
/// 800 m in central Europe, enough to see the van come closer street by street.
pub const MAP_ZOOM: u8 = 15;
/// Edge of a slippy-map tile, pixels.
pub const TILE_PX: f64 = 256.0;
/// Web Mercator's latitude limit: tiles end here.
const MAX_LAT: f64 = 85.051_128_78;

/// The tile a position falls in, and where in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TilePoint {
    /// Zoom level.
    pub z: u8,
    /// Tile column, 0 at 180° W.
    pub x: u32,
    /// Tile row, 0 at the northern limit.
    pub y: u32,
    /// The position's pixel within the tile from its left edge, 0 to 256.
    pub px: f64,
    /// The position's pixel within the tile from its top edge, 0 to 256.
    pub py: f64,
}

impl TilePoint {
    /// Where the position sits in its tile as CSS places a marker over the tile's image:
    /// percent of the tile's width from its left edge and of its height from its top,
    /// to one decimal (`"35.7"`, `"74.9"`).
    pub fn marker_percent(&self) -> (String, String) {
        (format!("{:.1}", self.px / TILE_PX * 100.0), format!("{:.1}", self.py / TILE_PX * 100.0))
    }
}

/// The slippy-map (Web Mercator, OpenStreetMap numbering) tile holding `lat`, `lon` at
/// `zoom`, and the position's pixel within it (pure). Latitudes beyond the Mercator
/// limit are clamped to it; longitudes wrap.
pub fn tile_at(lat: f64, lon: f64, zoom: u8) -> TilePoint {
    let n = f64::from(1u32 << zoom.min(30));
    let lon = (lon + 180.0).rem_euclid(360.0);
    let lat = lat.clamp(-MAX_LAT, MAX_LAT).to_radians();
    let fx = lon / 360.0 * n;
    let fy = (1.0 - lat.tan().asinh() / std::f64::consts::PI) / 2.0 * n;
    let (tx, ty) = (fx.floor().clamp(0.0, n - 1.0), fy.floor().clamp(0.0, n - 1.0));
    TilePoint {
        z: zoom,
        x: to_u32(tx),
        y: to_u32(ty),
        px: ((fx - tx) * TILE_PX).clamp(0.0, TILE_PX),
        py: ((fy - ty) * TILE_PX).clamp(0.0, TILE_PX),
    }
}

/// A whole, non-negative tile index below 2^30 as `u32`.
fn to_u32(v: f64) -> u32 {
    // Tile indices are below 2^30 by construction; the float is whole and in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = v as u32;
    i
}

/// A tile server's URL template (`https://tile.example.org/{z}/{x}/{y}.png`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileSource {
    template: String,
    origin: String,
}

impl TileSource {
    /// Checks a template: `https://`, a plain host, and `{z}`, `{x}`, `{y}` in its path.
    /// The error says what is wrong and what to write instead.
    pub fn parse(template: &str) -> Result<Self, String> {
        let template = template.trim();
        let origin = https_origin(template).ok_or_else(|| {
            format!(
                "{template:?} is not an https:// URL with a plain host; write it like \
                 \"https://tile.example.org/{{z}}/{{x}}/{{y}}.png\""
            )
        })?;
        let missing: Vec<&str> =
            ["{z}", "{x}", "{y}"].into_iter().filter(|p| !template.contains(p)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "{template:?} lacks {}; the tile server's URL needs {{z}}, {{x}} and {{y}} where the \
                 zoom, column and row go",
                missing.join(", ")
            ));
        }
        if template.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '<' || c == '>') {
            return Err(format!("{template:?} has spaces or quotes; a URL has neither"));
        }
        Ok(Self { template: template.to_owned(), origin })
    }

    /// The tile's URL.
    pub fn url(&self, tile: &TilePoint) -> String {
        self.template
            .replace("{z}", &tile.z.to_string())
            .replace("{x}", &tile.x.to_string())
            .replace("{y}", &tile.y.to_string())
    }

    /// `https://host[:port]`: what the page's Content-Security-Policy lets images come from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// `https://host[:port]` of an https URL whose host is plain (letters, digits, dots,
/// dashes; no user name), or `None`.
pub(crate) fn https_origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && !host.starts_with(['.', '-'])
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
    (host_ok && port_ok).then(|| format!("https://{}", authority.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_of_a_position_follows_the_osm_numbering() {
        // Zürich Hauptbahnhof at zoom 15: x 17161.357, y 11474.749 by the OSM wiki's formula.
        let t = tile_at(47.3779, 8.5403, 15);
        assert_eq!((t.z, t.x, t.y), (15, 17161, 11474), "{t:?}");
        assert!((t.px - 0.357 * TILE_PX).abs() < 0.5 && (t.py - 0.749 * TILE_PX).abs() < 0.5, "{t:?}");
        // The origin of the map: the top left corner of tile 0/0.
        let corner = tile_at(MAX_LAT, -180.0, 0);
        assert_eq!((corner.x, corner.y), (0, 0));
        assert!(corner.px.abs() < 1e-9 && corner.py.abs() < 1e-6, "{corner:?}");
        // The equator and the prime meridian meet in the middle of the world's one tile...
        let middle = tile_at(0.0, 0.0, 0);
        assert!((middle.px - 128.0).abs() < 1e-9 && (middle.py - 128.0).abs() < 1e-9, "{middle:?}");
        // ... and at the corner of four tiles at zoom 1.
        let z1 = tile_at(0.0, 0.0, 1);
        assert_eq!((z1.x, z1.y), (1, 1));
        // Beyond the Mercator limit and the date line: clamped and wrapped, never out of range.
        let north = tile_at(89.9, 180.0, MAP_ZOOM);
        assert_eq!((north.x, north.y), (0, 0), "{north:?}");
        let south = tile_at(-89.9, 179.999_999, MAP_ZOOM);
        assert_eq!((south.x, south.y), ((1 << 15) - 1, (1 << 15) - 1), "{south:?}");
    }

    #[test]
    fn the_pixel_within_the_tile_moves_with_the_van() {
        let here = tile_at(47.3779, 8.5403, MAP_ZOOM);
        assert!((0.0..=TILE_PX).contains(&here.px) && (0.0..=TILE_PX).contains(&here.py));
        // About 100 m east at this latitude is about 37 pixels at zoom 15.
        let east = tile_at(47.3779, 8.5403 + 100.0 / (111_320.0 * 47.3779_f64.to_radians().cos()), MAP_ZOOM);
        let moved = if east.x == here.x { east.px - here.px } else { east.px + TILE_PX - here.px };
        assert!((30.0..45.0).contains(&moved), "moved {moved} px");
        // North is up: a little north is fewer pixels from the top (or the tile above).
        let north = tile_at(47.3789, 8.5403, MAP_ZOOM);
        assert!(north.y < here.y || north.py < here.py, "{north:?} {here:?}");
        // The marker's place is the pixel as percent of the tile.
        let middle = tile_at(0.0, 0.0, 0);
        assert_eq!(middle.marker_percent(), ("50.0".to_owned(), "50.0".to_owned()));
    }

    #[test]
    fn a_tile_source_fills_its_template_and_names_its_origin() {
        let source = TileSource::parse("https://Tile.Example.org:8443/osm/{z}/{x}/{y}.png").expect("valid");
        assert_eq!(source.origin(), "https://tile.example.org:8443");
        let t = TilePoint { z: 15, x: 17161, y: 11474, px: 0.0, py: 0.0 };
        assert_eq!(source.url(&t), "https://Tile.Example.org:8443/osm/15/17161/11474.png");
        let http = TileSource::parse("http://tile.example.org/{z}/{x}/{y}.png").expect_err("http");
        assert!(http.contains("https://"), "{http}");
        let missing = TileSource::parse("https://tile.example.org/{z}/{x}.png").expect_err("no {y}");
        assert!(missing.contains("{y}"), "{missing}");
        assert!(TileSource::parse("https://user@tile.example.org/{z}/{x}/{y}.png").is_err(), "userinfo");
        assert!(TileSource::parse("https:///{z}/{x}/{y}").is_err(), "no host");
        assert!(TileSource::parse("https://t.example/{z}/{x}/{y}.png?a=\"b\"").is_err(), "quotes");
    }
}
