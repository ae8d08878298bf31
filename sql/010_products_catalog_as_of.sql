-- The consumer keeps each product's latest name/category/price. "Latest" is
-- by the event time of the message that supplied them, so a replay or a late,
-- out-of-order message never rolls the catalogue back to an older price.
ALTER TABLE products ADD COLUMN catalog_as_of TIMESTAMPTZ;
